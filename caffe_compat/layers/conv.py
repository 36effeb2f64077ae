"""Layer family: conv (being written)."""
