"""Layer family: data (being written)."""
