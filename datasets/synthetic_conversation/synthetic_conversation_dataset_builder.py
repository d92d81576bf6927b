"""synthetic_conversation: generated faces in conversation with micro-expressions.

Needs no download: every video is rendered from integer seeds by
`meldae_jax.data.synthetic`, so every build holds bit-identical records. Speech moves the
mouth, jaw and brows far more than the micro-expressions (MEs) do; the `difficulty`
of a config sets the ME amplitude against that fixed speech motion.
"""
import dataclasses
import multiprocessing
import os
import pathlib

import tensorflow_datasets as tfds

from meldae_jax.data import corpus_utils
from meldae_jax.data import schema
from meldae_jax.data.synthetic import generator

_HERE = pathlib.Path(__file__).parent


@dataclasses.dataclass
class SyntheticConfig(tfds.core.BuilderConfig):
  """Corpus size and look; see README.md for the measured sizes and build times."""
  difficulty: float = 0.5  # 0 easy .. 1 hard (ME amplitude vs speech motion)
  num_subjects: int = 28
  videos_per_subject: tuple = (1, 2)
  seconds: tuple = (20.0, 40.0)
  fps: float = 30.0
  image_size: int = 112
  jpeg_quality: int = 90
  me_period_s: float = 3.6
  corpus_seed: int = 0


class Builder(tfds.core.GeneratorBasedBuilder):
  """Synthetic conversational micro-expression spotting corpus (SPEC §4 schema)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {
      "1.0.0": f"Initial release (generator version {generator.GENERATOR_VERSION}).",
  }
  BUILDER_CONFIGS = [
      SyntheticConfig(name="default", description="ME amplitude ~2.5 px at 112 px "
                      "(difficulty 0.5); 28 subjects, 20-40 s videos.", difficulty=0.5),
      SyntheticConfig(name="easy", description="ME amplitude ~3.6 px, less noise "
                      "(difficulty 0); 84 subjects, so a from-scratch model sees enough "
                      "faces to generalise to unseen ones.", difficulty=0.0,
                      num_subjects=84),
      SyntheticConfig(name="hard", description="ME amplitude ~1.4 px, more noise and "
                      "head motion (difficulty 1).", difficulty=1.0),
      SyntheticConfig(name="tiny", description="For tests: 6 subjects, one 3 s video "
                      "each, 48 px.", difficulty=0.0, num_subjects=6,
                      videos_per_subject=(1, 1), seconds=(3.0, 3.0), image_size=48,
                      me_period_s=2.0),
  ]
  DEFAULT_CONFIG_NAME = "default"

  def _info(self) -> tfds.core.DatasetInfo:
    citation = (_HERE / "CITATIONS.bib").read_text() if (_HERE / "CITATIONS.bib").exists() else ""
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=schema.features(),
        homepage="https://github.com/meldae-jax",
        citation=citation,
    )

  def _plan(self):
    c = self.builder_config
    return generator.corpus_plan(c.num_subjects, videos_per_subject=c.videos_per_subject,
                                 seconds=c.seconds, fps=c.fps, corpus_seed=c.corpus_seed)

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    plan = self._plan()
    workers = _workers()  # before anything renders
    return {split: self._generate_examples([s for s in plan if s.split == split], workers)
            for split in ("train", "validation", "test")}

  def _generate_examples(self, specs, workers):
    """Renders videos, in `workers` processes when there are many (order stays fixed)."""
    c = self.builder_config
    # Plain arguments only: spawned workers cannot import this by-path module.
    jobs = [(spec, c.difficulty, c.image_size, c.fps, c.jpeg_quality, c.me_period_s)
            for spec in specs]
    if workers <= 1 or len(jobs) < 8:
      yield from map(generator.make_keyed_example, jobs)
      return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
      yield from pool.imap(generator.make_keyed_example, jobs)


def _workers() -> int:
  """Render processes: MELDAE_SYNTH_WORKERS (default 2; 1 renders in-process), at most
  the CPU count. A value that is no whole number is a CorpusError naming it (it was a
  ValueError traceback from inside the build)."""
  value = os.environ.get("MELDAE_SYNTH_WORKERS", "2")
  try:
    workers = int(value)
  except ValueError:
    raise corpus_utils.CorpusError(
        f"MELDAE_SYNTH_WORKERS must be a whole number of render processes, got {value!r}"
    ) from None
  return min(workers, os.cpu_count() or 1)
