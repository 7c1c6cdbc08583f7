"""plugind.trust."""
