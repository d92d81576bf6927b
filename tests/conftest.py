"""Settings shared by every test module."""
import os
import tempfile

import pytest


@pytest.fixture(autouse=True, scope="session")
def _tempfiles_inside_pytest_tree(tmp_path_factory):
  """TFDS leaves an empty `tmp*tfds` folder in the system temp dir for every builder made
  before its data exists (`DatasetInfo.initialize_from_bucket`, offline); hundreds per run.
  Point `tempfile` (and subprocesses, via TMPDIR) into pytest's own temp tree instead."""
  path = str(tmp_path_factory.mktemp("tempfile"))
  old_dir, old_env = tempfile.tempdir, os.environ.get("TMPDIR")
  tempfile.tempdir = path
  os.environ["TMPDIR"] = path
  yield
  tempfile.tempdir = old_dir
  if old_env is None:
    os.environ.pop("TMPDIR", None)
  else:
    os.environ["TMPDIR"] = old_env
