"""plugind.monitor."""
