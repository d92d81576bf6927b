"""Model parts in isolation: region pooling, per-frame fusion identity, masking, ResNet."""
import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from meldae_jax.models import fusion, heads, region_pool
from meldae_jax.models.enhancer import Attention, Enhancer
from meldae_jax.models.resnet import ResNet, standardize
from meldae_jax.models.temporal import Temporal

# rbg keys: initialisers compile several times faster on CPU than with threefry.
KEY = jax.random.key(0, impl="rbg")


def _np_adaptive_pool(x, g):
  """Direct loop over the bin rule [floor(i*h/G), ceil((i+1)*h/G))."""
  h, w = x.shape[-3:-1]
  out = np.zeros(x.shape[:-3] + (g, g, x.shape[-1]), np.float64)
  for i in range(g):
    r0, r1 = int(np.floor(i * h / g)), int(np.ceil((i + 1) * h / g))
    for j in range(g):
      c0, c1 = int(np.floor(j * w / g)), int(np.ceil((j + 1) * w / g))
      out[..., i, j, :] = x[..., r0:r1, c0:c1, :].mean(axis=(-3, -2))
  return out


@pytest.mark.parametrize("h,w,g", [(7, 7, 10), (14, 14, 10), (4, 6, 3), (5, 5, 5),
                                   (2, 3, 7)])
def test_adaptive_pool_matches_loop(h, w, g):
  x = np.random.RandomState(0).normal(size=(2, 3, h, w, 4)).astype(np.float32)
  np.testing.assert_allclose(region_pool.adaptive_avg_pool(jnp.asarray(x), g),
                             _np_adaptive_pool(x, g), rtol=1e-5, atol=1e-6)


def test_region_pool_embeddings():
  x = np.random.RandomState(1).normal(size=(2, 3, 7, 7, 8)).astype(np.float32)
  mod = region_pool.RegionPool(num_regions=10, max_frames=4)
  params = mod.init(KEY, x)["params"]
  out = np.asarray(mod.apply({"params": params}, x))
  assert out.shape == (2, 3 * 100, 8)
  p = nn.meta.unbox(params)
  want = (_np_adaptive_pool(x, 10).reshape(2, 3, 100, 8)
          + np.asarray(p["temporal_embedding"])[:3, None]
          + np.asarray(p["region_embedding"])[None])
  np.testing.assert_allclose(out, want.reshape(2, 300, 8), rtol=1e-5, atol=1e-6)


@functools.lru_cache(maxsize=None)
def _enhancer_setup(t=5, g=3, d=16, heads_=4, n=6, layers=2):
  rng = np.random.RandomState(2)
  regional = rng.normal(size=(2, t * g * g, d)).astype(np.float32)
  mask = np.ones((2, t), np.float32)
  mask[1, 3:] = 0
  mod = Enhancer(num_queries=n, num_layers=layers, num_heads=heads_)
  init = jax.jit(lambda r, m: mod.init(KEY, r, (t, g), frame_mask=m))
  params = nn.meta.unbox(init(regional, mask)["params"])
  # A non-zero output bias, so the "minus N*bias" part of the identity is tested.
  last = f"layer_{layers - 1}_cross_attention"
  params[last]["out_bias"] = jnp.asarray(rng.normal(size=(d,)), jnp.float32)
  apply = jax.jit(lambda r, m: mod.apply({"params": params}, r, (t, g),
                                         frame_mask=m))
  return regional, mask, apply, params[last]


def test_per_frame_readout_identity():
  t, n = 5, 6
  regional, mask, apply, last = _enhancer_setup(t=t, n=n)
  f_enh, aux = apply(regional, mask)
  assert f_enh.shape == (2, n, 16)
  e = fusion.per_frame_readout(aux["probs"], aux["v"], aux["out_kernel"], t)
  assert e.shape == (2, t, 16)
  want = np.asarray(aux["out"]).sum(1) - n * np.asarray(last["out_bias"])
  np.testing.assert_allclose(np.asarray(e).sum(1), want, atol=1e-5)
  # Independent einsum-free check of one frame's readout in NumPy.
  a = np.asarray(aux["attention"]).reshape(2, 4, n, t, 9)
  v = np.asarray(aux["v"]).reshape(2, t, 9, 4, 4)
  ctx = np.zeros((4, 4))
  for h in range(4):
    for q in range(n):
      for r in range(9):
        ctx[h] += a[0, h, q, 2, r] * v[0, 2, r, h]
  want_e = np.tensordot(ctx, np.asarray(aux["out_kernel"]), axes=([0, 1], [0, 1]))
  np.testing.assert_allclose(e[0, 2], want_e, rtol=1e-4, atol=1e-5)
  assert np.all(np.asarray(e)[1, 3:] == 0)  # padding frames get no attention


def test_enhancer_masks_padding_frames():
  regional, mask, apply, _ = _enhancer_setup()
  f_enh, aux = apply(regional, mask)
  att = np.asarray(aux["attention"])
  assert att.shape == (2, 4, 6, 5, 3, 3)
  np.testing.assert_allclose(att.sum(axis=(3, 4, 5)), 1.0, rtol=1e-5)
  assert np.all(att[1, :, :, 3:] == 0)
  noisy = regional.copy().reshape(2, 5, 9, 16)
  noisy[1, 3:] += 100.0
  f2, _ = apply(noisy.reshape(regional.shape), mask)
  np.testing.assert_allclose(f2, f_enh, atol=1e-6)


@pytest.mark.parametrize("kind", ["bilstm", "none"])
def test_temporal_respects_prefix_mask(kind):
  x = np.random.RandomState(3).normal(size=(1, 6, 8)).astype(np.float32)
  mod = Temporal(width=8, kind=kind)
  params = mod.init(KEY, x)["params"]
  short = mod.apply({"params": params}, x[:, :4])
  padded = x.copy()
  padded[:, 4:] = 50.0
  out = mod.apply({"params": params}, padded,
                  np.array([[1, 1, 1, 1, 0, 0]], np.float32))
  assert out.shape == (1, 6, 8)
  np.testing.assert_allclose(out[:, :4], short, rtol=1e-5, atol=1e-6)


def test_temporal_hidden_sizes_the_lstm_not_the_output():
  x = np.random.RandomState(5).normal(size=(2, 6, 8)).astype(np.float32)
  for hidden, units in ((0, 4), (16, 16)):  # 0: D/2 per direction (the paper)
    mod = Temporal(width=8, hidden=hidden)
    params = nn.meta.unbox(mod.init(KEY, x)["params"])
    for cell in ("forward_cell", "backward_cell"):
      assert params[cell]["hi"]["kernel"].shape == (units, units), (hidden, cell)
      assert params[cell]["ii"]["kernel"].shape == (8, units), (hidden, cell)
    assert params["proj"]["kernel"].shape == (2 * units, 8)
    assert mod.apply({"params": params}, x).shape == (2, 6, 8)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_bilstm_is_flax_bidirectional_lstm(dtype):
  """`lstm.bilstm` (input projection out of the loop, both directions in one): flax's
  parameters and initial values, and its outputs and gradients, with padded clips."""
  from meldae_jax.models import lstm  # pylint: disable=g-import-not-at-top

  class Wrap(nn.Module):
    fn: object

    @nn.compact
    def __call__(self, x, lengths):
      return self.fn(x, lengths, features=5, dtype=dtype)

  ours, ref = Wrap(lstm.bilstm), Wrap(lstm.flax_bilstm)
  x = jnp.asarray(np.random.RandomState(7).normal(size=(3, 6, 4)), jnp.float32)
  lengths = jnp.array([6, 4, 1])
  p_ours, p_ref = ours.init(KEY, x, lengths), ref.init(KEY, x, lengths)
  jax.tree.map(np.testing.assert_array_equal, p_ours, p_ref)  # same names, values
  # Non-zero biases, so a bias on the wrong gate shows.
  params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(KEY, p.shape), p_ref)
  tol = dict(rtol=1e-5, atol=1e-6) if dtype == jnp.float32 else dict(rtol=0, atol=3e-2)
  np.testing.assert_allclose(np.asarray(ours.apply(params, x, lengths), np.float32),
                             np.asarray(ref.apply(params, x, lengths), np.float32), **tol)
  if dtype == jnp.float32:
    w = jnp.asarray(np.random.RandomState(8).normal(size=(3, 6, 10)), jnp.float32)
    grad = lambda m: jax.grad(  # noqa: E731
        lambda p, x: jnp.sum(w * m.apply(p, x, lengths)), (0, 1))(params, x)
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6),
                 grad(ours), grad(ref))


def test_bilstm_backward_multiplies_by_a_pretransposed_wh(monkeypatch):
  """On one CPU device the loop's input gradient is g @ (a row-major copy of W_h^T), no
  per-step dot with a transposed rhs (which YNNPACK repacks every step); same gradients
  as with W_h itself."""
  from meldae_jax.models import lstm  # pylint: disable=g-import-not-at-top
  from meldae_jax.ops import blas_dot  # pylint: disable=g-import-not-at-top
  if not blas_dot.one_cpu_device():
    pytest.skip("the copy is made on one CPU device only")

  class Wrap(nn.Module):
    @nn.compact
    def __call__(self, x):
      return lstm.bilstm(x, features=5)

  x = jnp.asarray(np.random.RandomState(3).normal(size=(3, 6, 4)), jnp.float32)
  mod = Wrap()
  params = mod.init(KEY, x)
  grad = jax.jit(jax.grad(lambda p: jnp.sum(jnp.sin(mod.apply(p, x)))))

  def batched_rhs_contracting():  # per batched (per-direction) dot in the compiled grad
    hlo = grad.lower(params).compile().as_text()
    return re.findall(r" dot\(.*?rhs_batch_dims=\{0\}, rhs_contracting_dims=\{(\d)\}", hlo)

  ours, got = batched_rhs_contracting(), grad(params)
  assert ours and "2" not in ours, ours
  monkeypatch.setattr(lstm, "pretransposed", lambda wh: None)
  grad = jax.jit(jax.grad(lambda p: jnp.sum(jnp.sin(mod.apply(p, x)))))
  assert "2" in batched_rhs_contracting()  # what it replaces
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6),
               got, grad(params))


def test_token_fusion_shape_and_mask():
  rng = np.random.RandomState(4)
  fg = rng.normal(size=(2, 5, 16)).astype(np.float32)
  fe = rng.normal(size=(2, 3, 16)).astype(np.float32)
  mask = np.array([[1] * 5, [1, 1, 1, 0, 0]], np.float32)
  mod = fusion.TokenFusion(num_heads=4)
  params = mod.init(KEY, fg, fe, frame_mask=mask)["params"]
  out = mod.apply({"params": params}, fg, fe, frame_mask=mask)
  assert out.shape == (2, 5, 16)
  fg2 = fg.copy()
  fg2[1, 3:] = 9.0  # padding frames are not attended to by the real ones
  out2 = mod.apply({"params": params}, fg2, fe, frame_mask=mask)
  np.testing.assert_allclose(out2[:, :3], out[:, :3], atol=1e-5)


def test_clip_state_logit():
  logits = np.array([[1.0, 2.0, 3.0, 4.0], [-1.0, 5.0, 7.0, 100.0]], np.float32)
  mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0]], np.float32)
  np.testing.assert_allclose(heads.clip_state_logit(logits, mask), [2.5, 2.0])
  np.testing.assert_allclose(heads.clip_state_logit(logits), logits.mean(1))


def test_small_resnet_and_weight_standardisation():
  w = np.random.RandomState(5).normal(2.0, 3.0, size=(3, 3, 4, 5))
  ws = np.asarray(standardize(jnp.asarray(w)))
  np.testing.assert_allclose(ws.reshape(-1, 5).mean(0), 0, atol=1e-5)
  np.testing.assert_allclose(ws.reshape(-1, 5).std(0), 1, atol=1e-4)
  x = np.random.RandomState(6).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  mod = ResNet(width=24, stages=(1, 2), base_width=8)
  variables = jax.jit(mod.init)(KEY, x)
  assert set(variables) == {"params"}  # no BatchNorm statistics
  cls, patches = jax.jit(lambda v, x: mod.apply(v, x))(variables, x)
  assert cls.shape == (2, 24) and patches.shape == (2, 4, 4, 24)
  p = nn.meta.unbox(variables["params"])
  assert p["block1_unit1"]["conv_proj"]["kernel"].shape == (1, 1, 8, 32)
  assert variables["params"]["root_conv"]["kernel"].names == (
      None, None, "conv_in", "conv_out")


@pytest.mark.parametrize("heads_", [1, 12])
def test_attention_output_projection_init_does_not_depend_on_heads(heads_):
  """The cross-attention's (and `tokens` fusion's) `out_kernel` (heads, dh, D) is
  xavier-initialised as the (heads * dh, D) matrix it is, like the q/k/v kernels and the
  ViT's (flax's MHA): xavier over the 3-D shape counted `heads` as a receptive field, an
  std sqrt((1 + heads) / 2) too small (2.5x at the default 12 heads)."""
  d = 96
  mod = Attention(heads_)
  params = nn.meta.unbox(mod.init(KEY, jnp.ones((1, 4, d)), jnp.ones((1, 6, d)))["params"])
  assert params["out_kernel"].shape == (heads_, d // heads_, d)
  want = np.sqrt(2.0 / (d + d))  # xavier std of a (D, D) matrix
  np.testing.assert_allclose(np.std(params["out_kernel"]), want, rtol=0.1)
  np.testing.assert_allclose(np.std(params["query"]["kernel"]), want, rtol=0.1)
