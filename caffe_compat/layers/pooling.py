"""Layer family: pooling (being written)."""
