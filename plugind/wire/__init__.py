"""plugind.wire."""
