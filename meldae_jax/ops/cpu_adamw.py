"""The AdamW step over all trainable parameters as two CPU custom calls.

Why: XLA's CPU backend runs optax's clip + AdamW as a few small loop fusions per
parameter leaf (~1,000 thunks per step for the model's 265 leaves, mostly on one core),
and writes the clipped gradient and the update out between them: ~10 ms of a Ti112 train
step and ~41 ms of an S112 one, where one pass over the same bytes takes ~25 ms at S112
(docs/performance.md, session 22). `adamw.cc` reads each element's parameter, gradient
and two moments once and writes the three new values once, in chunks shared over XLA's
thread pool, into buffers aliased to the inputs (in place for a donated state); the
clip's global norm is one more call that sums the squares of every gradient.

`optim.apply_gradients` decides when to use it (one CPU device with AVX-512, float32,
`MELDAE_CPU_ADAMW` not '0', the handlers built) and what the coefficients are; this
module only calls the kernels.
"""
import jax
import jax.numpy as jnp

from meldae_jax.ops import row_kernels

_STEP, _SUM_SQUARES = "meldae_adamw", "meldae_sum_squares"
_KERNELS = row_kernels.RowKernels(
    "adamw.cc", {_STEP: "MeldaeAdamw", _SUM_SQUARES: "MeldaeSumSquares"},
    env="MELDAE_CPU_ADAMW", fallback="CPU fused AdamW unavailable, using optax's")
available = _KERNELS.available
set_plain = _KERNELS.set_plain

# The columns of `adamw_step`'s coefficients, in the kernel's order (adamw.cc's Coeff).
COEFFS = ("clip", "one_minus_b1", "b1", "one_minus_b2", "b2", "inv_bias_correction1",
          "inv_bias_correction2", "eps", "weight_decay", "neg_lr")


def enabled() -> bool:
  """Whether an optimiser step traced now takes the calls."""
  return _KERNELS.enabled(jnp.float32)


def xla_adamw():
  """Within: trace the optimiser step as optax's XLA ops (benchmarks, tests)."""
  return _KERNELS.off()


def _require() -> None:
  """Registers the handlers (once); an error if they cannot be built here."""
  if not available():
    raise RuntimeError("the fused AdamW custom calls are unavailable (see the warning "
                       "above); optim.apply_gradients uses optax's ops instead")


def sum_squares(leaves):
  """sum(x ** 2) over every element of every float32 array in `leaves`, a scalar."""
  _require()
  return jax.ffi.ffi_call(_SUM_SQUARES, jax.ShapeDtypeStruct((), jnp.float32),
                         vmap_method="sequential")(*leaves)


def adamw_step(coeffs, params, grads, mu, nu):
  """One AdamW step per leaf: lists of float32 arrays in, (params, mu, nu) lists out.

  Row i of `coeffs` (leaves, len(COEFFS)) holds leaf i's coefficients (see COEFFS):
  g = grad * clip; mu = (1 - b1) g + b1 mu; nu = (1 - b2) g^2 + b2 nu;
  u = mu * inv_bc1 / (sqrt(nu * inv_bc2) + eps) + weight_decay * param;
  param = param + neg_lr * u. The results alias params, mu and nu.
  """
  n = len(params)
  if not (len(grads) == len(mu) == len(nu) == n) or coeffs.shape != (n, len(COEFFS)):
    raise ValueError(f"adamw_step: {n} params, {len(grads)} grads, {len(mu)} mu, "
                     f"{len(nu)} nu and coeffs {coeffs.shape}; expected ({n}, "
                     f"{len(COEFFS)}) coefficients and one of each per leaf")
  _require()
  shapes = [jax.ShapeDtypeStruct(x.shape, jnp.float32) for x in (*params, *mu, *nu)]
  # Argument 0 is coeffs; params, grads, mu, nu follow, n each.
  aliases = {1 + k * n + i: j * n + i for j, k in enumerate((0, 2, 3)) for i in range(n)}
  out = jax.ffi.ffi_call(_STEP, shapes, input_output_aliases=aliases,
                         vmap_method="sequential")(  # e.g. an ensemble's optimisers
      coeffs.astype(jnp.float32), *params, *grads, *mu, *nu)
  return list(out[:n]), list(out[n:2 * n]), list(out[2 * n:])
