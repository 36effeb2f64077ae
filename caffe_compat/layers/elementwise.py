"""Layer family: elementwise (being written)."""
