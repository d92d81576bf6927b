"""The exact (erf) GELU, written so that XLA's CPU backend runs it fast.

`jax.nn.gelu(x, approximate=False)` is `0.5 x erfc(-x/sqrt 2)`; XLA lowers erfc with
branches (exp and a rational for each half) and differentiates through them. The same
function as `x Phi(x)` with `erf`, plus its derivative `Phi(x) + x phi(x)` given
directly, is ~1.8x faster forward + backward on a (1600, 768) float32 array and agrees
with jax.nn.gelu to 1e-6 (values and gradients; tests/test_vit.py).
"""
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

_SQRT_HALF = float(np.sqrt(0.5))
_INV_SQRT_2PI = float(1.0 / np.sqrt(2.0 * np.pi))


def _cdf(x):
  return 0.5 * (1.0 + lax.erf(x * jnp.asarray(_SQRT_HALF, x.dtype)))


@jax.custom_jvp
def exact_gelu(x):
  """x * Phi(x), Phi the standard normal CDF."""
  return x * _cdf(x)


@exact_gelu.defjvp
def _exact_gelu_jvp(primals, tangents):
  (x,), (dx,) = primals, tangents
  cdf = _cdf(x)
  pdf = jnp.exp(-0.5 * x * x) * jnp.asarray(_INV_SQRT_2PI, x.dtype)
  return x * cdf, (cdf + x * pdf) * dx
