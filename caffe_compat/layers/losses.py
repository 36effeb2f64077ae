"""Layer family: losses (being written)."""
