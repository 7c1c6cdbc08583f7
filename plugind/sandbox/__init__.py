"""plugind.sandbox."""
