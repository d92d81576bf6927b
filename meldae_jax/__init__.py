"""MELDAE-JAX: micro-expression spotting in conversations (JAX/Flax)."""
from meldae_jax import host_malloc  # noqa: F401  keeps XLA's step buffers mapped (CPU)
from meldae_jax import xla_flags  # noqa: F401  sets XLA_FLAGS before JAX starts
