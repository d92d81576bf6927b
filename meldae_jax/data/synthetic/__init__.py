"""Synthetic conversational micro-expression corpus: timelines, face renderer, generator."""
from meldae_jax.data.synthetic.generator import (GENERATOR_VERSION, VideoSpec, corpus_plan,
                                                 decode_frame, encode_frames, generate_video)
