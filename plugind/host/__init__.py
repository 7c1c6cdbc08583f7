"""plugind.host."""
