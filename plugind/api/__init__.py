"""plugind.api."""
