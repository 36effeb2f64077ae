"""Layer family: normalization (being written)."""
