"""plugind.runtime."""
