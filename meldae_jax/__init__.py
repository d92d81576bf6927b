"""MELDAE-JAX: micro-expression spotting in conversations (JAX/Flax)."""
from meldae_jax import xla_flags  # noqa: F401  sets XLA_FLAGS before JAX starts
