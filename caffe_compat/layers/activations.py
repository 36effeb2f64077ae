"""Layer family: activations (being written)."""
