"""The ViT's softmax attention on CPU with its four products done by sgemm per head.

Why: in an S112 train step XLA's CPU backend spent ~130 ms of ~1.5 s on the attention's
core (docs/performance.md, session 13): its (L x dh x L) batched dots (50 x 64 x 50) run
at 35-100 GFLOP/s, and around them q, k, v, the context and their gradients are
transposed between (N, L, H, dh) and (N, H, L, dh), and the q|k|v gradient is assembled
from three padded pieces. `attention` reads q, k and v where the fused projection put
them, (N, L, 3D) with (3, H, dh) along the last axis, with a row stride per operand, and
writes the context and the q|k|v gradient the same way (`blas_gemm.cc`, one
single-threaded sgemm per (frame, head) on XLA's own thread pool). The softmax and its
gradient stay in XLA. The projection's bias is not added to q|k|v by XLA: the calls take
it apart and add what of it the result depends on (`blas_gemm.cc`; docs/performance.md,
session 28). Same products and FLOPs as `models.attention.dot_product_attention`;
results differ by float32 rounding (the 1/sqrt(dh) scale is applied to q k^T instead of
q; the bias enters through the algebra above rather than q + bq).

Used where `enabled()`: one CPU device (a custom call has no sharding rule), float32,
the sgemm that `blas_dot` found; `MELDAE_CPU_ATTENTION=0` turns it off.
"""
import functools

import jax
from jax.ad_checkpoint import checkpoint_name
import jax.numpy as jnp
import numpy as np

from meldae_jax.ops import blas_dot
from meldae_jax.ops import native

# What the calls' products (the scores q k^T and the context p v, batched over frames
# and heads) carry for remat policies: 'dots' saves them, as it saves XLA's batched dots
# on the other path, 'dots_no_batch' does not (`models.vit.REMAT_POLICIES`).
BATCHED_DOT_NAME = "meldae_batched_dot"

_TARGETS = {"scores": "MeldaeAttentionScores", "context": "MeldaeAttentionContext",
            "scores_grad": "MeldaeAttentionScoresGrad", "qkv_grad": "MeldaeAttentionQkvGrad"}


@functools.cache
def available() -> bool:
  """Registers the handlers once, from `blas_dot`'s library and with its sgemm; False
  if `blas_dot` could not build or find them (it warns once)."""
  if not blas_dot.available():
    return False
  native.register_targets(blas_dot.library(), {
      f"meldae_attention_{name}": symbol for name, symbol in _TARGETS.items()})
  return True


_FORCED = blas_dot.TraceSettings()  # innermost last: False turns the path off
_BIAS_BY_XLA = blas_dot.TraceSettings()  # innermost last: True, XLA adds the bias


def xla_attention():
  """Within: trace the attention with XLA's own batched dots (benchmarks, tests)."""
  return blas_dot.within(_FORCED, False)


def xla_bias():
  """Within: the q|k|v bias added by XLA to the whole array before the calls, which
  then take a zero bias (benchmarks)."""
  return blas_dot.within(_BIAS_BY_XLA, True)


def enabled(dtype) -> bool:
  """Whether an attention over `dtype` arrays traced now takes this path."""
  return blas_dot.path_on(_FORCED, "MELDAE_CPU_ATTENTION", dtype) and available()


def _call(name, out_shape, *args, **attrs):
  return jax.ffi.ffi_call(f"meldae_attention_{name}",
                          jax.ShapeDtypeStruct(out_shape, jnp.float32),
                          vmap_method="sequential")(*args, **attrs)


def _scaled(heads, d):
  """The attributes of the calls that apply q k^T's 1/sqrt(dh)."""
  return dict(heads=np.int64(heads), scale=np.float32(1.0 / np.sqrt(d // heads)))


def attention(qkv, heads: int, bias=None):
  """softmax(q k^T / sqrt(dh)) v per frame and head: (N, L, 3D) q|k|v -> (N, L, D),
  with q|k|v = `qkv` + `bias` (3D,) where a bias is given: the calls add what of it the
  result depends on, without XLA's pass over the whole array (`blas_gemm.cc`)."""
  if bias is None:
    bias = jnp.zeros(qkv.shape[-1:], qkv.dtype)
  elif bias.shape != qkv.shape[-1:]:
    raise ValueError(f"attention: bias of shape {bias.shape} for q|k|v of shape "
                     f"{qkv.shape}; it must be ({qkv.shape[-1]},)")
  elif blas_dot.innermost(_BIAS_BY_XLA, False):
    qkv, bias = qkv + bias, jnp.zeros_like(bias)
  return _attention(qkv, bias, heads)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _attention(qkv, bias, heads: int):
  return _fwd(qkv, bias, heads)[0]


def _fwd(qkv, bias, heads):
  n, length, three_d = qkv.shape
  d = three_d // 3
  s = checkpoint_name(_call("scores", (n, heads, length, length), qkv, bias,
                            **_scaled(heads, d)), BATCHED_DOT_NAME)
  p = jax.nn.softmax(s)
  ctx = checkpoint_name(_call("context", (n, length, d), p, qkv, bias,
                              heads=np.int64(heads)), BATCHED_DOT_NAME)
  return ctx, (qkv, bias, p)


def _bwd(heads, res, g):
  qkv, bias, p = res
  d = qkv.shape[-1] // 3
  dp = _call("scores_grad", p.shape, g, qkv, heads=np.int64(heads))
  ds = p * (dp - jnp.sum(dp * p, axis=-1, keepdims=True))
  dqkv = _call("qkv_grad", qkv.shape, ds, p, g, qkv, bias, **_scaled(heads, d))
  return dqkv, jnp.sum(dqkv, axis=(0, 1))


_attention.defvjp(_fwd, _bwd)
