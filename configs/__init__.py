"""Experiment configs: `python -m meldae_jax.main --config=configs/<name>.py[:arg]`."""
