"""MELDAE models: `build_model(model_config)` returns the top-level linen module."""
from meldae_jax.models.meldae import MELDAE


def build_model(model_config):
  """The MELDAE module for `model_config` (see `config.default_model_config`)."""
  return MELDAE(model_config)
