"""The one feature schema every corpus builder emits (SPEC §4), TensorFlow-free.

One example per video. Frame indices are 0-based and inclusive everywhere in the project;
builders convert from their corpus's convention before emitting an example.
"""
import numpy as np
import tensorflow_datasets as tfds

EXPRESSION_TYPES = ("micro", "macro")
SPEAKING, LISTENING, UNKNOWN = 1, 0, -1


def features() -> tfds.features.FeaturesDict:
  """TFDS features of the shared schema (no Image/Video features: they need TensorFlow)."""
  return tfds.features.FeaturesDict({
      "video_id": tfds.features.Text(),
      "subject": tfds.features.Text(),
      "fps": tfds.features.Scalar(np.float32),
      # Encoded face crops (PNG or JPEG bytes), one per frame.
      "frames": tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.object_)),
      "intervals": tfds.features.Sequence({
          "onset": np.int32,
          "apex": np.int32,  # -1 = unknown
          "offset": np.int32,
          "type": tfds.features.ClassLabel(names=list(EXPRESSION_TYPES)),
      }),
      # Per frame: 1 speaking, 0 listening/silent, -1 unknown.
      "speaking": tfds.features.Tensor(shape=(None,), dtype=np.int8),
  })
