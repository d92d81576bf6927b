"""Bi-LSTM with the input projection taken out of the time loop, both directions in one.

The same function and parameters as flax's `nn.Bidirectional(nn.RNN(OptimizedLSTMCell),
nn.RNN(OptimizedLSTMCell))` (names `{forward,backward}_cell/{ii,if,ig,io}/kernel` and
`h{i,f,g,o}/{kernel,bias}`, the same initialisers, zero initial carry, flax's order for
the backward direction with `seq_lengths`), computed the way cuDNN and PyTorch's CPU
LSTM do it: x @ W_i for every frame and both directions is one matmul before the loop,
and one loop steps both directions together, each step one batched h @ W_h. Same FLOPs.
Why: flax's cell projects the input inside the loop, so each of the 2 x T steps ran two
tiny dots (B x D x 4H), each paying a thread-pool start on XLA's CPU backend; in a Ti112
train step the two loops' backward passes took ~30 ms, serial, with the second core idle.
"""
from typing import Any

import flax.linen as nn
from flax.linen import recurrent
import jax
import jax.numpy as jnp

from meldae_jax.models import layers
from meldae_jax.ops import blas_dot

_GATES = "ifgo"  # flax's order (OptimizedLSTMCell concatenates i, f, g, o)


class _CellParams(nn.Module):
  """`nn.OptimizedLSTMCell`'s parameters, concatenated: W_i (D, 4H), W_h (H, 4H), b (4H)."""
  features: int
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, in_features: int):
    h = self.features
    x_dummy = jax.ShapeDtypeStruct((1, in_features), self.param_dtype)
    h_dummy = jax.ShapeDtypeStruct((1, h), self.param_dtype)
    wi, wh, b = [], [], []
    for g in _GATES:  # parameter creation order as flax's cell: i{g} then h{g}
      k, _ = recurrent.DenseParams(h, use_bias=False, param_dtype=self.param_dtype,
                                   kernel_init=nn.initializers.lecun_normal(),
                                   name=f"i{g}")(x_dummy)
      wi.append(k)
      k, bias = recurrent.DenseParams(h, use_bias=True, param_dtype=self.param_dtype,
                                      kernel_init=nn.initializers.orthogonal(),
                                      name=f"h{g}")(h_dummy)
      wh.append(k)
      b.append(bias)
    return (jnp.concatenate(wi, -1), jnp.concatenate(wh, -1), jnp.concatenate(b, -1))


@jax.custom_vjp
def recurrent_matmul(hid, wh, wh_t):
  """(2, B, H) @ (2, H, 4H) per direction, whose input gradient multiplies by `wh_t`,
  a row-major copy of wh's transpose made once before the loop (or None).

  Why: the loop's backward multiplies each step's gradient by wh^T. Given wh itself,
  XLA's CPU backend hands YNNPACK a dot with a transposed rhs, which repacks the
  (2, H, 4H) weight on every one of the T steps: ~1 ms each, serial, in an S112 train
  step ~16 ms for 0.02 GFLOP (docs/performance.md, session 13).
  """
  return _rm_fwd(hid, wh, wh_t)[0]


def _rm_fwd(hid, wh, wh_t):
  return jnp.einsum("dbh,dhg->dbg", hid, wh), (hid, wh, wh_t)


def _rm_bwd(res, g):
  hid, wh, wh_t = res
  dhid = (jnp.einsum("dbg,dhg->dbh", g, wh) if wh_t is None
          else jnp.einsum("dbg,dgh->dbh", g, wh_t))
  dwh = jnp.einsum("dbh,dbg->dhg", hid, g)
  return dhid, dwh, None if wh_t is None else jnp.zeros_like(wh_t)


recurrent_matmul.defvjp(_rm_fwd, _rm_bwd)


def pretransposed(wh):
  """(2, H, 4H) -> (2, 4H, H) as a real row-major copy that XLA can neither fold back
  into the dot nor turn into a layout change (an optimization barrier around a 1-D
  reshape), with no gradient of its own; None off a single CPU device, where dots take
  transposed operands as they are."""
  if not blas_dot.one_cpu_device():
    return None
  d, h, g = wh.shape
  flat = jax.lax.optimization_barrier(jnp.swapaxes(wh, 1, 2).reshape(-1))
  return jax.lax.stop_gradient(flat.reshape(d, g, h))


def bilstm(x, seq_lengths=None, *, features: int, dtype: Any = jnp.float32,
           unroll: int = 1):
  """(B, T, D) -> (B, T, 2H): [forward outputs, backward outputs in input order].

  Call it inside a module's `nn.compact` method: the parameters are that module's
  `forward_cell/...` and `backward_cell/...`, where `nn.Bidirectional` put them.
  `seq_lengths` (B,) int: frames past a clip's length are padding, as for `nn.RNN`: the
  backward direction starts at each clip's last real frame; outputs at padding steps
  are left as computed.
  """
  b, _, _ = x.shape
  h = features
  cells = [_CellParams(h, name=f"{d}_cell")(x.shape[-1]) for d in ("forward", "backward")]
  wi = jnp.concatenate([c[0] for c in cells], -1)  # (D, 8H): both directions
  wh = jnp.stack([c[1] for c in cells])            # (2, H, 4H)
  bias = jnp.stack([c[2] for c in cells])          # (2, 4H)
  x, wi, wh = nn.dtypes.promote_dtype(x, wi, wh, dtype=dtype)  # bias: float32 (layers)

  xw = blas_dot.dot_general(x, wi, (((2,), (0,)), ((), ())))  # (B, T, 8H): one matmul
  fwd, bwd = jnp.split(xw, 2, axis=-1)
  bwd = recurrent.flip_sequences(bwd, seq_lengths, num_batch_dims=1, time_major=False)
  xw = jnp.stack([fwd, bwd]).transpose(2, 0, 1, 3)              # (T, 2, B, 4H)

  wh_t = pretransposed(wh)

  def step(carry, xw_t):
    c, hid = carry
    y = layers.add_bias(recurrent_matmul(hid.astype(wh.dtype), wh, wh_t), bias[:, None])
    i, f, g, o = jnp.split(y + xw_t, 4, axis=-1)
    i, f, o = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jax.nn.sigmoid(o)
    c = f * c + i * jnp.tanh(g)
    hid = o * jnp.tanh(c)
    return (c, hid), hid

  zeros = jnp.zeros((2, b, h), jnp.float32)  # flax's carry: param_dtype zeros
  _, out = jax.lax.scan(step, (zeros, zeros), xw, unroll=unroll)  # (T, 2, B, H)
  fwd = out[:, 0].transpose(1, 0, 2)
  bwd = recurrent.flip_sequences(out[:, 1].transpose(1, 0, 2), seq_lengths,
                                 num_batch_dims=1, time_major=False)
  return jnp.concatenate([fwd, bwd.astype(fwd.dtype)], axis=-1)


def flax_bilstm(x, seq_lengths=None, *, features: int, dtype: Any = jnp.float32):
  """The reference `bilstm` equals: flax's modules, as the model used them before."""
  cell = lambda name: nn.OptimizedLSTMCell(features, dtype=dtype, name=name)  # noqa: E731
  return nn.Bidirectional(nn.RNN(cell("forward_cell"), name="forward_rnn"),
                          nn.RNN(cell("backward_cell"), name="backward_rnn"),
                          name="bilstm")(x, seq_lengths=seq_lengths)
