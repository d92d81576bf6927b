"""Builds the C++ sources in this folder into shared libraries, once, with a cache.

Why a build at first use rather than at install: the sources are small, the wheel stays
pure Python, and the FFI headers come from the installed jax (`jax.ffi.include_dir()`),
so a library always matches the jax it is loaded into.
"""
import hashlib
import os
import pathlib
import shutil
import subprocess
import tempfile

import jax


def cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get(
      "MELDAE_CACHE", pathlib.Path.home() / ".cache" / "meldae_jax"))


def build(src: pathlib.Path) -> pathlib.Path:
  """Compiles `src` once per (source, jax version); returns the .so path.

  Raises RuntimeError if there is no compiler or the compile fails."""
  include = jax.ffi.include_dir()
  key = hashlib.sha256(src.read_bytes() + jax.__version__.encode()
                       + include.encode()).hexdigest()[:16]
  out = cache_dir() / f"{src.stem}-{key}.so"
  if out.exists():
    return out
  cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
  if cxx is None:
    raise RuntimeError(f"no C++ compiler (g++/c++ or $CXX) to build {src.name}")
  out.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
    part = pathlib.Path(tmp) / out.name
    cmd = [cxx, "-O2", "-std=c++17", "-shared", "-fPIC", "-w", f"-I{include}",
           str(src), "-o", str(part)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
      raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    os.replace(part, out)  # atomic: a concurrent process sees all of it or nothing
  return out
