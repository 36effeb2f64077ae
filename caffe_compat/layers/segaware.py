"""Layer family: segaware (being written)."""
