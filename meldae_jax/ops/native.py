"""Builds the C++ sources in this folder into shared libraries, once, with a cache.

Why a build at first use rather than at install: the sources are small, the wheel stays
pure Python, and the FFI headers come from the installed jax (`jax.ffi.include_dir()`),
so a library always matches the jax it is loaded into.
"""
import ctypes
import hashlib
import logging
import os
import pathlib
import shutil
import subprocess
import tempfile
from typing import Callable

import jax
import jax.numpy as jnp


def cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get(
      "MELDAE_CACHE", pathlib.Path.home() / ".cache" / "meldae_jax"))


def _write_atomically(out: pathlib.Path, make: Callable[[pathlib.Path], None]) -> None:
  """`make(part)` writes the file at `part`, which then replaces `out` in one step, so a
  concurrent process sees all of it or nothing."""
  out.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
    part = pathlib.Path(tmp) / out.name
    make(part)
    os.replace(part, out)


def private_copy(path: str) -> str:
  """A copy of a shared library under its own file name in the cache, so dlopen gives
  the caller its own instance (a BLAS set to one thread without touching the copy numpy
  loaded)."""
  src = pathlib.Path(path)
  tag = hashlib.sha256(str(src.resolve()).encode()).hexdigest()[:12]
  out = cache_dir() / f"private-{tag}-{src.name}"
  if not out.exists() or out.stat().st_size != src.stat().st_size:
    _write_atomically(out, lambda part: part.write_bytes(src.read_bytes()))
  return str(out)


def compiler() -> str | None:
  """The C++ compiler `build` uses ($CXX, else g++, else c++), or None."""
  return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


# -ffp-contract=off: the kernels' arithmetic as written (explicit FMAs stay FMAs). GCC
# otherwise fuses a product and a difference written apart, e.g. LayerNorm's backward
# (dy scale - a), whose unrounded product then leaves ~1e-8 where the result is 0 exactly,
# times rstd (1/sqrt(eps) for a constant row).
CXX_FLAGS = ("-O2", "-std=c++17", "-ffp-contract=off", "-shared", "-fPIC", "-w")


def build(src: pathlib.Path) -> pathlib.Path:
  """Compiles `src` once per (source, the headers beside it, jax version); returns the
  .so path.

  Raises RuntimeError if there is no compiler or the compile fails."""
  include = jax.ffi.include_dir()
  headers = b"".join(h.read_bytes() for h in sorted(src.parent.glob("*.h")))
  key = hashlib.sha256(src.read_bytes() + headers + jax.__version__.encode()
                       + include.encode() + " ".join(CXX_FLAGS).encode()).hexdigest()[:16]
  out = cache_dir() / f"{src.stem}-{key}.so"
  if out.exists():
    return out
  cxx = compiler()
  if cxx is None:
    raise RuntimeError(f"no C++ compiler (g++/c++ or $CXX) to build {src.name}")

  def compile_to(part: pathlib.Path) -> None:
    cmd = [cxx, *CXX_FLAGS, f"-I{include}", f"-I{src.parent}", str(src), "-o", str(part)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
      raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")

  _write_atomically(out, compile_to)
  return out


def register_or_warn(load: Callable[[], ctypes.CDLL], targets: dict[str, str],
                     fallback: str,
                     prepare: Callable[[ctypes.CDLL], None] | None = None) -> bool:
  """`load()`s a handler library, `prepare`s it (hands it what it needs; raises OSError
  or RuntimeError if it cannot) and registers its `targets`; on failure warns once with
  `fallback` (what runs instead) and the reason, and returns False."""
  try:
    so = load()
    if prepare is not None:
      prepare(so)
    register_targets(so, targets)
  except (OSError, RuntimeError, subprocess.SubprocessError) as e:
    logging.warning("%s: %s", fallback, e)
    return False
  return True


def register_targets(so, targets: dict[str, str]) -> None:
  """Registers each {FFI target name: handler symbol in `so`} for the CPU platform."""
  for name, symbol in targets.items():
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(so, symbol)),
                                platform="cpu")


def gemm_call(target: str, a, b, trans_a: bool, trans_b: bool):
  """op(a) @ op(b) by the registered GEMM custom call `target` (`gemm_call.h`'s
  operands: a (M, K), or (K, M) with `trans_a`; b (K, N), or (N, K) with `trans_b`),
  float32 (M, N) out."""
  m = a.shape[1] if trans_a else a.shape[0]
  n = b.shape[0] if trans_b else b.shape[1]
  return jax.ffi.ffi_call(target, jax.ShapeDtypeStruct((m, n), jnp.float32),
                          vmap_method="sequential")(a, b, trans_a=trans_a,
                                                    trans_b=trans_b)
