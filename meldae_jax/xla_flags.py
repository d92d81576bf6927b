"""XLA flags the project's CPU speed depends on, set before JAX starts its backend.

`meldae_jax/__init__.py` imports this, so `python -m meldae_jax.main`, the benchmarks and
any program that imports `meldae_jax` before its first JAX computation run with them.
The project sets them itself so nobody has to remember a shell export. A flag already
named in $XLA_FLAGS is left as the user set it; `MELDAE_XLA_FLAGS=0` leaves $XLA_FLAGS
alone entirely (how docs/performance.md measures the before/after of each flag).
"""
import os

# Measured in docs/performance.md (same session, same machine, before/after).
CPU_FLAGS: tuple[str, ...] = ()


def apply(flags=CPU_FLAGS, environ=os.environ) -> str:
  """Appends each flag whose name is not yet in $XLA_FLAGS; returns the result."""
  current = environ.get("XLA_FLAGS", "")
  if environ.get("MELDAE_XLA_FLAGS", "1") == "0":
    return current
  named = {f.split("=", 1)[0] for f in current.split()}
  extra = [f for f in flags if f.split("=", 1)[0] not in named]
  if extra:
    environ["XLA_FLAGS"] = " ".join([current] + extra).strip()
  return environ.get("XLA_FLAGS", "")


apply()
