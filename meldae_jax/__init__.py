"""MELDAE-JAX: micro-expression spotting in conversations (JAX/Flax)."""
from meldae_jax import xla_flags as _xla_flags  # before JAX starts: see xla_flags.py

del _xla_flags
