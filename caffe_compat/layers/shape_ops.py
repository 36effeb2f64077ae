"""Layer family: shape_ops (being written)."""
