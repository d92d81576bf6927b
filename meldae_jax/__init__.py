"""MELDAE-JAX: micro-expression spotting in conversations (JAX/Flax)."""
