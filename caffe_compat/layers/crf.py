"""Layer family: crf (being written)."""
