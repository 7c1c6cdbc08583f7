"""plugind.sdk."""
