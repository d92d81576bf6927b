"""Builds a corpus of `datasets/<name>/` into a TFDS data_dir (array_record, no TensorFlow).

  python -m meldae_jax.data.build synthetic_conversation/easy --data_dir=~/tensorflow_datasets
  python -m meldae_jax.data.build wdmd --data_dir=DIR --manual_dir=/path/to/WDMD

The `datasets/` folder is not an installed package, so builder modules are imported by
path; TFDS names a class called `Builder` after its `<name>_dataset_builder` module.
"""
import argparse
import importlib.util
import logging
import os
import pathlib
import sys
import time

import tensorflow_datasets as tfds

log = logging.getLogger("meldae_jax.data.build")
DATASETS_DIR = pathlib.Path(__file__).resolve().parents[2] / "datasets"


def load_builder_class(name: str, datasets_dir=None):
  """Imports `datasets/<name>/<name>_dataset_builder.py` once and returns its Builder."""
  module_name = f"{name}_dataset_builder"
  module = sys.modules.get(module_name)
  if module is None:
    path = pathlib.Path(datasets_dir or DATASETS_DIR) / name / f"{module_name}.py"
    if not path.exists():
      raise FileNotFoundError(f"no builder for {name!r}: {path} does not exist")
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
      spec.loader.exec_module(module)
    except BaseException:
      del sys.modules[module_name]
      raise
  return module.Builder


class BuildError(ValueError):
  """A corpus that cannot be built as asked; the one-line message says why."""


def builder_class(spec: str, datasets_dir=None):
  """The Builder of `name[/config]`; BuildError for a config it lacks (TFDS's ValueError
  for it, raised by preview and training too, was a traceback)."""
  name, _, config = spec.partition("/")
  cls = load_builder_class(name, datasets_dir)
  known = [c.name for c in getattr(cls, "BUILDER_CONFIGS", ())]
  if config and known and config not in known:
    raise BuildError(f"{name} has no config {config!r} (have {known})")
  return cls


def default_data_dir() -> str:
  """$TFDS_DATA_DIR, else ~/tensorflow_datasets: where training reads a corpus by default
  (configs/common.default_data_dir is this), so a build without --data_dir lands there."""
  return os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))


def make_builder(spec: str, data_dir=None, datasets_dir=None):
  """`name[/config]` -> a builder instance writing array_record files under data_dir.

  No data_dir: `default_data_dir()`, with `~` expanded as training expands it (TFDS's own
  default keeps a `~` of $TFDS_DATA_DIR as a folder named `~` under the current one).
  """
  config = spec.partition("/")[2]
  cls = builder_class(spec, datasets_dir)
  kwargs = {"file_format": "array_record",
            "data_dir": os.path.expanduser(str(data_dir or default_data_dir()))}
  if config:
    kwargs["config"] = config
  return cls(**kwargs)


def build_command(spec: str, data_dir) -> str:
  return f"python -m meldae_jax.data.build {spec} --data_dir={data_dir}"


def not_built_lines(builder, spec: str, data_dir, manual_dir=None) -> list[str]:
  """What train and preview say of a corpus not built in data_dir: where it was looked
  for, and the command that builds it (with --manual_dir for a licensed corpus)."""
  command = build_command(spec, data_dir)
  if getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
    command += f" --manual_dir={manual_dir or '<folder with the downloaded files>'}"
  return [f"Corpus '{spec.partition('/')[0]}' is not built in {data_dir} "
          f"(looked for {builder.data_path}).", "Build it once with:", f"  {command}"]


def build(spec: str, data_dir=None, manual_dir=None, datasets_dir=None):
  """Generates and writes the corpus (a no-op when it is already there)."""
  name = spec.partition("/")[0]
  builder_class(spec, datasets_dir)  # an unknown name or config first
  if data_dir and os.path.exists(os.path.expanduser(str(data_dir))) and not os.path.isdir(
      os.path.expanduser(str(data_dir))):
    raise BuildError(f"--data_dir {data_dir} is a file, not a folder")
  builder = make_builder(spec, data_dir, datasets_dir)
  manual = manual_dir and os.path.expanduser(str(manual_dir))
  # An empty folder too: TFDS's AssertionError for it was a traceback.
  if (getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None) and not builder.is_prepared()
      and not (manual and os.path.isdir(manual) and os.listdir(manual))):
    raise BuildError(f"{name} is built from your own copy of the corpus: pass "
                     f"--manual_dir=FOLDER (its layout: datasets/{name}/README.md)"
                     + (f"; {manual_dir} is " + ("empty" if os.path.isdir(manual) else
                                                 "not a folder") if manual_dir else ""))
  if manual_dir and builder.is_prepared():  # TFDS reuses it; the folder given is not read
    log.warning("%s is already built in %s: --manual_dir %s was not read (delete that "
                "folder to build it from there)", spec, builder.data_dir, manual_dir)
  download_config = tfds.download.DownloadConfig(
      manual_dir=os.path.expanduser(str(manual_dir)) if manual_dir else None)
  builder.download_and_prepare(download_config=download_config)
  return builder


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("spec", help="<name>[/<config>], e.g. synthetic_conversation/easy")
  parser.add_argument("--data_dir", default=None,
                      help="TFDS data_dir (default $TFDS_DATA_DIR, else "
                           "~/tensorflow_datasets: where training reads it)")
  parser.add_argument("--manual_dir", default=None, help="where licensed corpora were put by hand")
  args = parser.parse_args(argv)
  # The builders count the rows they repaired (e.g. casme2's offset := apex) in INFO lines;
  # the root logger shows WARNING and above only.
  logging.getLogger("meldae_jax").setLevel(logging.INFO)
  start = time.perf_counter()
  from meldae_jax.data import corpus_utils  # pylint: disable=g-import-not-at-top
  try:
    builder = build(args.spec, args.data_dir, args.manual_dir)
  except (BuildError, FileNotFoundError, corpus_utils.CorpusError) as e:
    print(f"error: {e}".replace("\n", " "), file=sys.stderr)
    sys.exit(2)
  splits = {k: v.num_examples for k, v in builder.info.splits.items()}
  print(f"{builder.info.full_name} in {builder.data_dir}: {splits} "
        f"({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
  main()
