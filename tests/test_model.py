"""Full MELDAE: shapes for every variant and ablation, masking, and a few AdamW steps.

Big variants are checked with `jax.eval_shape` (tracing only); small ones run jit-compiled.
Parameters of the compiled runs are filled from `eval_shape` with NumPy (BERT-style
N(0, 0.02), unit LayerNorm scales), because compiling `init`'s random number
generation dominates test time on CPU; the parts' real initialisers run in
test_model_parts.py.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from meldae_jax import losses
from meldae_jax.models import build_model
from meldae_jax.models.config import default_model_config
from meldae_jax.models.vit import vit_dims


def _config(**kw):
  cfg = default_model_config()
  cfg.update(kw)
  return cfg


def _tiny(**kw):
  base = dict(variant="Mu/16", image_size=32, num_frames=4, num_regions=3,
              num_queries=4, enhancer_heads=2)
  base.update(kw)
  return _config(**base)


def _video(b, t, s, seed=0):
  return np.random.RandomState(seed).randint(0, 256, (b, t, s, s, 3)).astype(np.uint8)


def _mask(b, t):
  m = np.ones((b, t), np.float32)
  m[-1, t // 2:] = 0
  return m


def _abstract(model, video, mask):
  """(param shapes, output shapes) without compiling or running anything."""
  key = jax.random.key(0)
  variables = jax.eval_shape(
      lambda v, m: model.init(key, v, frame_mask=m), video, mask)
  out = jax.eval_shape(
      lambda p, v, m: model.apply(p, v, frame_mask=m, return_attention=True),
      variables, video, mask)
  return variables, out


def _fake_params(model, video, mask, seed=0):
  variables = jax.eval_shape(
      lambda v, m: model.init(jax.random.key(0), v, frame_mask=m), video, mask)
  rng = np.random.RandomState(seed)

  def fill(path, leaf):
    name = str(path[-1])
    if "scale" in name:
      return np.ones(leaf.shape, np.float32)
    if "bias" in name:
      return np.zeros(leaf.shape, np.float32)
    return (0.02 * rng.normal(size=leaf.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, nn.meta.unbox(variables["params"]))


def _expected(cfg, b, t, heads_):
  g = cfg.num_regions
  return dict(loc_logits=(b, t, cfg.num_classes), state_logits=(b, t),
              me_logit=(b,), attention=(b, heads_, cfg.num_queries, t, g, g))


def _check_outputs(out, cfg, b, t, heads_):
  want = _expected(cfg, b, t, heads_)
  if not cfg.enhancer:
    del want["attention"]
  assert {k: tuple(v.shape) for k, v in out.items()} == want
  for k in ("loc_logits", "state_logits", "me_logit", "attention"):
    if k in out:
      assert out[k].dtype == jnp.float32, k


@pytest.mark.parametrize("kw", [
    dict(variant="Ti/16"), dict(variant="S/16"), dict(variant="B/16"),
    dict(variant="L/16", enhancer_heads=16), dict(variant="L/16"),  # 12 x 85 heads
    dict(variant="S/8"), dict(variant="B/8", dtype="bfloat16"),
    dict(variant="B/16", scan_blocks=False, remat_policy="full"),
    dict(backbone="resnet50"), dict(backbone="resnet50", fusion="tokens", num_classes=2),
])
def test_big_variants_eval_shape(kw):
  cfg = _config(image_size=112, **kw)
  video = jax.ShapeDtypeStruct((2, 16, 112, 112, 3), jnp.uint8)
  mask = jax.ShapeDtypeStruct((2, 16), jnp.float32)
  variables, out = _abstract(build_model(cfg), video, mask)
  _check_outputs(out, cfg, 2, 16, cfg.enhancer_heads)
  params = variables["params"]
  assert "backbone" in params
  d = vit_dims(cfg.variant)["width"]  # the ResNet's too (resnet_width 0)
  assert params["region_pool"]["region_embedding"].shape == (100, d)
  # Logical axis names ride on the Dense kernels (for the sharding rules).
  names = params["enhancer"]["layer_0_cross_attention"]["query"]["kernel"].names
  assert names == ("embed", "heads", "kv")


@pytest.mark.parametrize("variant", ["Mu/16", "L/16"])
def test_resnet_ablation_changes_the_backbone_only(variant):
  """Table 3's ResNet-50 run keeps every other part as the ViT run has it: same parameter
  shapes outside `backbone` (resnet_width 0 = the ViT's width). A fixed 768 made the rest
  of a Mu model 40x larger. An explicit resnet_width still sets D."""
  video = jax.ShapeDtypeStruct((1, 4, 64, 64, 3), jnp.uint8)
  mask = jax.ShapeDtypeStruct((1, 4), jnp.float32)

  def rest(**kw):
    params = _abstract(build_model(_tiny(variant=variant, image_size=64, **kw)),
                       video, mask)[0]["params"]
    return jax.tree.map(lambda p: p.shape, {k: v for k, v in params.items()
                                            if k != "backbone"})

  small = dict(backbone="resnet50", resnet_stages=(1, 1), resnet_base_width=8)
  assert rest(**small) == rest()
  d = rest(resnet_width=32, **small)["region_pool"]["region_embedding"]
  assert nn.meta.unbox(d) == (9, 32)


def test_ti16_112px_runs_jitted():
  """(B,T)=(2,16) at 112 px: 7x7 patch grid pooled to G=10 > 7 regions."""
  cfg = _config(variant="Ti/16", image_size=112)
  model = build_model(cfg)
  video, mask = _video(2, 16, 112), _mask(2, 16)
  params = _fake_params(model, video, mask)
  out = jax.jit(lambda p, v, m: model.apply({"params": p}, v, frame_mask=m,
                                            return_attention=True))(params, video, mask)
  _check_outputs(out, cfg, 2, 16, 12)
  att = np.asarray(out["attention"])
  np.testing.assert_allclose(att.sum(axis=(3, 4, 5)), 1.0, rtol=1e-4)
  assert np.all(att[1, :, :, 8:] == 0)  # padding frames get no attention
  for v in out.values():
    assert np.all(np.isfinite(v))


@pytest.mark.parametrize("kw", [
    dict(), dict(enhancer=False), dict(temporal="none"), dict(fusion="tokens"),
    dict(num_classes=2, enhancer_layers=2),
    dict(backbone="resnet50", resnet_width=32, resnet_stages=(1, 1),
         resnet_base_width=8),
])
def test_tiny_ablations_run_jitted(kw):
  """Shapes and finiteness; padding frames' content changes no real output."""
  cfg = _tiny(**kw)
  model = build_model(cfg)
  video, mask = _video(2, 4, 32), _mask(2, 4)
  params = _fake_params(model, video, mask)
  apply = jax.jit(lambda p, v, m: model.apply(
      {"params": p}, v, frame_mask=m, return_attention=cfg.enhancer))
  out = apply(params, video, mask)
  _check_outputs(out, cfg, 2, 4, 2)
  for v in out.values():
    assert np.all(np.isfinite(v))
  noisy = video.copy()
  noisy[1, 2:] = 255 - noisy[1, 2:]
  out2 = apply(params, noisy, mask)
  np.testing.assert_allclose(out2["me_logit"], out["me_logit"], rtol=1e-5, atol=1e-6)
  for k in ("loc_logits", "state_logits"):
    np.testing.assert_allclose(out2[k][:, :2], out[k][:, :2], rtol=1e-5, atol=1e-6)


def _batch(b, t, k, seed=0):
  rng = np.random.RandomState(seed)
  labels = np.zeros((b, t, k), np.float32)
  labels[0, 1:3] = 1
  boundary = np.zeros_like(labels)
  boundary[0, 1] = boundary[0, 2] = 1
  mask = _mask(b, t)
  speaking = rng.randint(0, 2, (b, t)).astype(np.int8)
  speaking[mask == 0] = -1
  return dict(video=_video(b, t, 32, seed), frame_mask=mask, labels=labels,
              boundary=boundary, speaking=speaking,
              me_label=np.array([1, 0], np.float32))


def test_adamw_steps_reduce_loss():
  cfg = _tiny()
  model = build_model(cfg)
  batch = _batch(2, 4, 1)
  params = _fake_params(model, batch["video"], batch["frame_mask"], seed=2)
  loss_cfg = losses.default_loss_config()
  opt = optax.adamw(1e-3)
  opt_state = opt.init(params)

  def loss_fn(p):
    out = model.apply({"params": p}, batch["video"], frame_mask=batch["frame_mask"],
                      train=True)
    return losses.total_loss(out, batch, loss_cfg)[0]

  @jax.jit
  def step(p, s):
    loss, grads = jax.value_and_grad(loss_fn)(p)
    updates, s = opt.update(grads, s, p)
    return optax.apply_updates(p, updates), s, loss

  history = []
  for _ in range(6):
    params, opt_state, loss = step(params, opt_state)
    history.append(float(loss))
  assert np.all(np.isfinite(history))
  assert history[-1] < 0.9 * history[0], history


@pytest.mark.parametrize("kw, match", [
    (dict(enhancer_layers=0), "enhancer_layers must be >= 1"),
    (dict(backbone="resnet50", resnet_width=32, resnet_stages=(1, 1), resnet_base_width=8,
          remat_policy="full"), "apply to the ViT backbone only"),
    (dict(backbone="resnet50", resnet_width=32, resnet_stages=(1, 1), resnet_base_width=8,
          scan_blocks=True), "apply to the ViT backbone only"),
])
def test_settings_the_model_would_not_honour_are_errors(kw, match):
  # enhancer_layers=0 was a TypeError deep in flax; the ResNet ignored the ViT's remat
  # and scan settings silently (a run asking for remat to save memory got none).
  model = build_model(_tiny(**kw))
  with pytest.raises(ValueError, match=match):
    _abstract(model, _video(1, 4, 32), _mask(1, 4))
