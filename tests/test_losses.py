"""Losses against direct NumPy loops (SPEC §2), masks, ablations and stability."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from meldae_jax import losses

B, T, K = 3, 6, 2


def _sig(x):
  return 1.0 / (1.0 + math.exp(-x))


def _bce(x, y):
  s = _sig(x)
  return -(y * math.log(s) + (1 - y) * math.log(1 - s))


@pytest.fixture(name="data")
def fixture_data():
  rng = np.random.RandomState(0)
  logits = rng.normal(0, 2, (B, T, K)).astype(np.float32)
  labels = (rng.rand(B, T, K) > 0.6).astype(np.float32)
  boundary = (rng.rand(B, T, K) > 0.7).astype(np.float32)
  mask = np.ones((B, T), np.float32)
  mask[1, 4:] = 0
  mask[2, :] = 0  # a clip with no real frame at all
  return logits, labels, boundary, mask


def _np_focal(x, y, m, alpha=0.25, gamma=2.0):
  num = den = 0.0
  for idx in np.ndindex(x.shape):
    if m[idx]:
      p = _sig(x[idx])
      pt = p if y[idx] else 1 - p
      at = alpha if y[idx] else 1 - alpha
      num += at * (1 - pt) ** gamma * _bce(x[idx], y[idx])
      den += 1
  return num / den


def _np_per_clip(x, y, bnd, m, fn):
  vals = []
  for b in range(x.shape[0]):
    valid = [t for t in range(x.shape[1]) if m[b, t]]
    if not valid:
      continue
    for k in range(x.shape[2]):
      vals.append(fn([x[b, t, k] for t in valid], [y[b, t, k] for t in valid],
                     [bnd[b, t, k] for t in valid]))
  return float(np.mean(vals))


def _np_tversky(xs, ys, _):
  s = [_sig(v) for v in xs]
  tp = sum(si * yi for si, yi in zip(s, ys))
  fn = sum((1 - si) * yi for si, yi in zip(s, ys))
  fp = sum(si * (1 - yi) for si, yi in zip(s, ys))
  ti = (tp + 1) / (tp + 0.7 * fn + 0.3 * fp + 1)
  return (1 - ti) ** 0.75


def _np_iou(xs, ys, _):
  s = [_sig(v) for v in xs]
  inter = sum(si * yi for si, yi in zip(s, ys))
  union = sum(s) + sum(ys) - inter
  return 1 - (inter + 1) / (union + 1)


def _np_boundary(xs, ys, bs):
  return sum((10.0 if bi else 1.0) * _bce(xi, yi)
             for xi, yi, bi in zip(xs, ys, bs)) / len(xs)


def test_focal(data):
  x, y, _, m = data
  got = losses.sigmoid_focal_loss(x, y, m, 0.25, 2.0)
  np.testing.assert_allclose(got, _np_focal(x, y, np.repeat(m[..., None], K, -1)),
                             rtol=1e-5)
  clip_x, clip_y = x[:, 0, 0], y[:, 0, 0]
  np.testing.assert_allclose(losses.sigmoid_focal_loss(clip_x, clip_y),
                             _np_focal(clip_x, clip_y, np.ones(B)), rtol=1e-5)


@pytest.mark.parametrize("name,fn", [
    ("focal_tversky", _np_tversky), ("iou", _np_iou)])
def test_overlap_losses(data, name, fn):
  x, y, bnd, m = data
  f = dict(focal_tversky=losses.focal_tversky_loss, iou=losses.soft_iou_loss)[name]
  np.testing.assert_allclose(f(x, y, m), _np_per_clip(x, y, bnd, m, fn), rtol=1e-5)


def test_boundary_and_bal(data):
  x, y, bnd, m = data
  want_b = _np_per_clip(x, y, bnd, m, _np_boundary)
  np.testing.assert_allclose(losses.boundary_bce(x, y, bnd, m, 10.0), want_b,
                             rtol=1e-5)
  want = _np_per_clip(x, y, bnd, m, _np_tversky) + 0.5 * want_b
  np.testing.assert_allclose(
      losses.bal_loss(x, y, bnd, m, boundary_lambda=0.5), want, rtol=1e-5)


def test_pointwise_losses(data):
  x, y, _, m = data
  mk = np.repeat(m[..., None], K, -1) > 0
  s = 1 / (1 + np.exp(-x.astype(np.float64)))
  bce = -(y * np.log(s) + (1 - y) * np.log(1 - s))
  d = np.abs(s - y)
  np.testing.assert_allclose(losses.bce_loss(x, y, m), bce[mk].mean(), rtol=1e-5)
  np.testing.assert_allclose(losses.regression_loss(x, y, m, "mae"), d[mk].mean(),
                             rtol=1e-5)
  np.testing.assert_allclose(losses.regression_loss(x, y, m, "mse"),
                             (d**2)[mk].mean(), rtol=1e-5)
  huber = np.where(d < 1, 0.5 * d**2, d - 0.5)
  np.testing.assert_allclose(losses.regression_loss(x, y, m, "smooth_l1"),
                             huber[mk].mean(), rtol=1e-5)


def test_masked_frames_do_not_matter(data):
  x, y, bnd, m = data
  x2 = x.copy()
  x2[m == 0] = 1e4  # garbage on padding frames
  cfg = losses.default_loss_config()
  for kind in losses.LOC_LOSSES:
    cfg.loc_loss = kind
    np.testing.assert_allclose(losses.loc_loss(x2, y, bnd, m, cfg),
                               losses.loc_loss(x, y, bnd, m, cfg), rtol=1e-6,
                               err_msg=kind)


def _batch_and_outputs(rng):
  speaking = rng.randint(-1, 2, (B, T)).astype(np.int8)
  m = np.ones((B, T), np.float32)
  m[0, 5:] = 0
  speaking[0, 5:] = -1
  batch = dict(
      frame_mask=m, speaking=speaking,
      labels=(rng.rand(B, T, K) > 0.5).astype(np.float32),
      boundary=(rng.rand(B, T, K) > 0.8).astype(np.float32),
      me_label=np.array([1, 0, 1], np.float32))
  outputs = dict(loc_logits=rng.normal(size=(B, T, K)).astype(np.float32),
                 state_logits=rng.normal(size=(B, T)).astype(np.float32),
                 me_logit=rng.normal(size=(B,)).astype(np.float32))
  return batch, outputs


def test_total_loss_terms():
  batch, outputs = _batch_and_outputs(np.random.RandomState(1))
  cfg = losses.default_loss_config()
  total, aux = losses.total_loss(outputs, batch, cfg)
  me = _np_focal(outputs["me_logit"], batch["me_label"], np.ones(B))
  known = (batch["frame_mask"] > 0) & (batch["speaking"] != -1)
  state = _np_focal(outputs["state_logits"], (batch["speaking"] == 1) * 1.0, known)
  loc = float(losses.bal_loss(outputs["loc_logits"], batch["labels"],
                              batch["boundary"], batch["frame_mask"]))
  np.testing.assert_allclose(aux["me_loss"], me, rtol=1e-5)
  np.testing.assert_allclose(aux["state_loss"], state, rtol=1e-5)
  np.testing.assert_allclose(aux["loc_loss"], loc, rtol=1e-6)
  np.testing.assert_allclose(total, 0.5 * me + 0.2 * state + loc, rtol=1e-5)
  cfg.state_weight = 0.0
  outputs["state_logits"] = np.full((B, T), np.nan, np.float32)
  total0, _ = losses.total_loss(outputs, batch, cfg)
  np.testing.assert_allclose(total0, 0.5 * me + loc, rtol=1e-5)


@pytest.mark.parametrize("kind", losses.LOC_LOSSES)
def test_stable_at_extreme_logits(kind):
  batch, outputs = _batch_and_outputs(np.random.RandomState(2))
  sign = np.random.RandomState(3)
  outputs = {k: np.where(sign.rand(*v.shape) > 0.5, 1e4, -1e4).astype(np.float32)
             for k, v in outputs.items()}
  # Also a perfectly predicted clip (saturated TI = 1).
  outputs["loc_logits"][1] = np.where(batch["labels"][1] > 0, 1e4, -1e4)
  cfg = losses.default_loss_config()
  cfg.loc_loss = kind
  fn = lambda o: losses.total_loss(o, batch, cfg)[0]  # noqa: E731
  value, grads = jax.value_and_grad(fn)(jax.tree.map(jnp.asarray, outputs))
  assert np.isfinite(value)
  for g in jax.tree.leaves(grads):
    assert np.all(np.isfinite(g))


def test_extreme_logits_give_the_exact_values():
  # From logits, not log(clip(p)): a confidently wrong logit of -1e4 costs 1e4 nats (a
  # clipped log would cap it near 16 or 100), weighted 10 on a boundary frame.
  x = np.array([[[-1e4]], [[3.0]]], np.float32)
  y = np.array([[[1.0]], [[0.0]]], np.float32)
  bnd = np.array([[[1.0]], [[0.0]]], np.float32)
  want = (10 * 1e4 + _bce(3.0, 0.0)) / 2   # one frame per clip, mean over the clips
  np.testing.assert_allclose(losses.boundary_bce(x, y, bnd), want, rtol=1e-6)
  # Focal: alpha = 0.25 on positives, 1 - alpha on negatives (RetinaNet).
  np.testing.assert_allclose(losses.sigmoid_focal_loss(np.array([-1e4]), np.ones(1)),
                             0.25 * 1e4, rtol=1e-6)
  np.testing.assert_allclose(losses.sigmoid_focal_loss(np.zeros(2), np.array([1.0, 0.0])),
                             (0.25 + 0.75) * 0.25 * math.log(2) / 2, rtol=1e-6)
