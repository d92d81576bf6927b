"""Optimiser: regex param groups, freezing, schedule, gradient accumulation."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from meldae_jax import optim


def _with(cfg, **kw):
  c = ml_collections.ConfigDict(cfg.to_dict())
  c.update(kw)
  return c


def _cfg(**kw):
  c = ml_collections.ConfigDict(dict(
      groups=(("backbone/.*", 1e-3), (".*", 1e-1)), schedule="constant", warmup_steps=0,
      end_lr_factor=0.0, weight_decay=0.0, weight_decay_regex=".*/kernel", b1=0.9,
      b2=0.999, eps=1e-8, clip_norm=0.0, grad_accum_steps=1))
  c.update(kw)
  return c


def _params():
  return {"backbone": {"Dense_0": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros((2,))}},
          "head": {"kernel": jnp.ones((2, 1)), "bias": jnp.zeros((1,))}}


def _step(tx, params, grads):
  state = tx.init(params)
  updates, state = tx.update(grads, state, params)
  return optax.apply_updates(params, updates), state


def test_groups_get_their_learning_rates():
  tx, schedules = optim.make_optimizer(_cfg(), total_steps=10)
  params = _params()
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.3), params)
  new, _ = _step(tx, params, grads)
  delta = jax.tree.map(lambda a, b: np.abs(np.asarray(a - b)), new, params)
  # Adam's first step moves every coordinate by lr * g / (|g| + eps) ~= lr.
  np.testing.assert_allclose(delta["backbone"]["Dense_0"]["kernel"], 1e-3, rtol=1e-4)
  np.testing.assert_allclose(delta["backbone"]["Dense_0"]["bias"], 1e-3, rtol=1e-4)
  np.testing.assert_allclose(delta["head"]["kernel"], 1e-1, rtol=1e-4)
  np.testing.assert_allclose(delta["head"]["bias"], 1e-1, rtol=1e-4)
  assert sorted(schedules) == ["group_0", "group_1"]


def test_first_matching_group_wins():
  labels = optim.group_labels(_params(), [(".*/bias", 1.0), ("backbone/.*", 2.0), (".*", 3.0)])
  assert labels["backbone"]["Dense_0"]["bias"] == "group_0"
  assert labels["backbone"]["Dense_0"]["kernel"] == "group_1"
  assert labels["head"]["bias"] == "group_0"
  assert labels["head"]["kernel"] == "group_2"


def test_uncovered_parameter_raises_naming_it():
  tx, _ = optim.make_optimizer(_cfg(groups=(("backbone/.*", 1e-3),)), total_steps=10)
  with pytest.raises(ValueError, match="not covered") as e:
    tx.init(_params())
  assert "'head/kernel'" in str(e.value) and "'head/bias'" in str(e.value)
  assert "backbone/Dense_0" not in str(e.value)


def test_frozen_group_is_unchanged():
  cfg = _cfg(groups=(("backbone/.*", 0.0), (".*", 1e-2)), weight_decay=0.1, clip_norm=1.0)
  tx, schedules = optim.make_optimizer(cfg, total_steps=10)
  assert list(schedules) == ["group_1"]
  params = _params()
  state = tx.init(params)
  for i in range(3):
    grads = jax.tree.map(lambda p: jnp.full_like(p, 1.0 + i), params)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  np.testing.assert_array_equal(params["backbone"]["Dense_0"]["kernel"], np.ones((3, 2)))
  np.testing.assert_array_equal(params["backbone"]["Dense_0"]["bias"], np.zeros((2,)))
  assert not np.allclose(params["head"]["kernel"], 1.0)


def test_frozen_gradients_do_not_count_in_the_clip_norm():
  # A huge frozen gradient must not shrink the trainable group's clipped update.
  cfg = _cfg(groups=(("backbone/.*", 0.0), (".*", 1.0)), clip_norm=1.0)
  # Adam normalises magnitudes, so compare with and without a huge frozen gradient: with
  # clipping over all parameters the trainable update would shrink; it must not change.
  tx, _ = optim.make_optimizer(cfg, total_steps=10)
  params = _params()
  small = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
  huge = dict(small, backbone=jax.tree.map(lambda p: jnp.full_like(p, 1e6), small["backbone"]))
  a, _ = _step(tx, params, small)
  b, _ = _step(tx, params, huge)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_weight_decay_only_on_kernels():
  cfg = _cfg(groups=((".*", 1e-1),), weight_decay=0.5)
  tx, _ = optim.make_optimizer(cfg, total_steps=10)
  params = {"a": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}}
  zero = jax.tree.map(jnp.zeros_like, params)
  new, _ = _step(tx, params, zero)
  np.testing.assert_allclose(new["a"]["kernel"], 1.0 - 0.1 * 0.5, rtol=1e-6)
  np.testing.assert_array_equal(new["a"]["bias"], 1.0)


def test_warmup_cosine_schedule_values():
  cfg = _cfg(schedule="warmup_cosine", warmup_steps=10, end_lr_factor=0.1)
  sched = optim.make_schedule(2.0, cfg, total_steps=110)
  np.testing.assert_allclose(
      [float(sched(s)) for s in (0, 5, 10, 60, 110, 200)],
      [0.0, 1.0, 2.0, 0.2 + 0.5 * 1.8, 0.2, 0.2], rtol=1e-5, atol=1e-6)
  tx, schedules = optim.make_optimizer(_with(cfg, groups=((".*", 2.0),)), 110)
  # Logged at 1-based train step s: the lr its update used, the schedule's at s - 1.
  assert float(optim.learning_rates(schedules, 1)["lr/group_0"]) == 0.0
  lrs = optim.learning_rates(schedules, 6)
  np.testing.assert_allclose(float(lrs["lr/group_0"]), 1.0, rtol=1e-5)
  # With accumulation the schedule counts optimiser updates, not micro-batches: micro-
  # steps 11 and 12 make update 5.
  tx, schedules = optim.make_optimizer(
      _with(cfg, groups=((".*", 2.0),), grad_accum_steps=2), 220)
  for step in (11, 12):
    np.testing.assert_allclose(
        float(optim.learning_rates(schedules, step, 2)["lr/group_0"]), 1.0, rtol=1e-5)


def test_the_logged_lr_is_the_one_the_update_used():
  cfg = _cfg(schedule="warmup_cosine", warmup_steps=2, end_lr_factor=0.0)
  tx, schedules = optim.make_optimizer(_with(cfg, groups=((".*", 1.0),), b1=0.0,
                                             weight_decay=0.0, clip_norm=0.0), 4)
  params = {"w": jnp.zeros(())}
  state = tx.init(params)
  for step in range(1, 5):  # Adam with b1 = 0 on a constant gradient moves lr per step
    new, state = optim.apply_gradients(tx, {"w": jnp.ones(())}, state, params)
    logged = float(optim.learning_rates(schedules, step)["lr/group_0"])
    np.testing.assert_allclose(float(params["w"] - new["w"]), logged, rtol=1e-3, atol=1e-6)
    params = new


def test_a_group_that_labels_no_parameter_is_a_warning(caplog):
  optim.group_labels(_params(), [("Backbone/.*", 1e-5), (".*", 5e-4)])  # a typo
  assert "[('Backbone/.*', 1e-05)] label no parameter" in caplog.text
  caplog.clear()
  optim.group_labels(_params(), [(".*", 5e-4), ("backbone/.*", 1e-5)])  # shadowed
  assert "[('backbone/.*', 1e-05)] label no parameter" in caplog.text
  caplog.clear()
  optim.group_labels(_params(), [(".*", 5e-4), ("backbone/.*", 1e-5)])
  assert "label no parameter" not in caplog.text  # once per table
  optim.group_labels(_params(), [("backbone/.*", 1e-5), (".*", 5e-4)])
  assert "label no parameter" not in caplog.text


def test_accumulating_k_steps_equals_one_big_batch():
  k = 4
  rng = np.random.default_rng(0)
  x = rng.normal(size=(8 * k, 3)).astype(np.float32)
  y = rng.normal(size=(8 * k, 1)).astype(np.float32)
  params = {"backbone": {"kernel": jnp.asarray(rng.normal(size=(3, 1)), jnp.float32)},
            "head": {"bias": jnp.zeros((1,))}}

  def loss(p, xb, yb):
    pred = xb @ p["backbone"]["kernel"] + p["head"]["bias"]
    return jnp.mean((pred - yb) ** 2)

  cfg = _cfg(schedule="warmup_cosine", warmup_steps=1, clip_norm=0.5, weight_decay=0.01)
  big_tx, _ = optim.make_optimizer(cfg, total_steps=2)
  acc_tx, _ = optim.make_optimizer(_with(cfg, grad_accum_steps=k), total_steps=2 * k)

  big_p, big_s = params, big_tx.init(params)
  acc_p, acc_s = params, acc_tx.init(params)
  for _ in range(2):  # two optimiser updates
    g = jax.grad(loss)(big_p, x, y)
    u, big_s = big_tx.update(g, big_s, big_p)
    big_p = optax.apply_updates(big_p, u)
    for i in range(k):
      sl = slice(8 * i, 8 * (i + 1))
      g = jax.grad(loss)(acc_p, x[sl], y[sl])
      u, acc_s = acc_tx.update(g, acc_s, acc_p)
      before = acc_p
      acc_p = optax.apply_updates(acc_p, u)
      if i < k - 1:  # nothing moves until the k-th micro-batch
        jax.tree.map(np.testing.assert_array_equal, acc_p, before)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               acc_p, big_p)


def test_model_parameters_are_all_covered_and_backbone_grouped():
  from meldae_jax.models import build_model  # pylint: disable=g-import-not-at-top
  from meldae_jax.models import config as mc  # pylint: disable=g-import-not-at-top
  cfg = mc.default_model_config()
  cfg.update(dict(variant="Mu/8", image_size=32, num_frames=4, num_regions=2, num_queries=4,
                  enhancer_heads=2))
  model = build_model(cfg)
  params = jax.eval_shape(lambda r: model.init(
      {"params": r, "dropout": r}, jnp.zeros((1, 4, 32, 32, 3), jnp.uint8),
      train=False), jax.random.key(0))["params"]
  labels = jax.tree_util.tree_leaves_with_path(
      optim.group_labels(params, [("backbone/.*", 1e-5), (".*", 5e-4)]),
      is_leaf=lambda x: isinstance(x, str))
  names = {optim.path_name(p): l for p, l in labels}
  assert any(n.startswith("backbone/") for n in names)
  assert all((l == "group_0") == n.startswith("backbone/") for n, l in names.items())
  # Weight decay on every weight matrix, whatever its module calls it (the enhancer's
  # attention names its output projection `out_kernel`), and on nothing else.
  from configs import common  # pylint: disable=g-import-not-at-top
  regex = common.base_config().optimizer.weight_decay_regex
  decayed = {optim.path_name(p): bool(d) for p, d in jax.tree_util.tree_leaves_with_path(
      optim._decay_mask(params, regex))}  # pylint: disable=protected-access
  assert decayed["enhancer/layer_0_cross_attention/out_kernel"]
  for name, d in decayed.items():
    assert d == name.rsplit("/", 1)[-1].endswith("kernel"), name


def test_a_warmup_as_long_as_the_run_is_a_warning(caplog):
  cfg = _cfg(schedule="warmup_cosine", warmup_steps=500, grad_accum_steps=4)
  optim.make_optimizer(_with(cfg, groups=((".*", 1.0),)), 2000)  # 500 updates
  assert "the whole run is warmup" in caplog.text
  caplog.clear()
  optim.make_optimizer(_with(cfg, groups=((".*", 1.0),), grad_accum_steps=1), 2000)
  assert "warmup" not in caplog.text


def test_a_weight_decay_regex_that_covers_no_trainable_parameter_is_a_warning(caplog):
  # weight_decay > 0 with a regex naming nothing (a torch-style '.*weight', or only frozen
  # parameters) decayed nothing, silently.
  params = _params()
  for regex, groups in ((".*weight", ((".*", 1e-2),)),
                        ("backbone/.*kernel", (("backbone/.*", 0.0), (".*", 1e-2)))):
    caplog.clear()
    tx, _ = optim.make_optimizer(_cfg(groups=groups, weight_decay=0.1,
                                      weight_decay_regex=regex), total_steps=10)
    tx.init(params)
    assert f"weight_decay_regex {regex!r}" in caplog.text, regex
  caplog.clear()
  tx, _ = optim.make_optimizer(_cfg(weight_decay=0.1), total_steps=10)  # '.*/kernel'
  tx.init(params)
  tx, _ = optim.make_optimizer(_cfg(weight_decay=0.0, weight_decay_regex=".*weight"), 10)
  tx.init(params)
  assert "weight_decay_regex" not in caplog.text


def test_micro_batches_past_the_last_update_are_a_warning(caplog):
  optim.make_optimizer(_cfg(grad_accum_steps=4), total_steps=10)
  assert "the last 2 micro-batch(es)" in caplog.text
  caplog.clear()
  optim.make_optimizer(_cfg(grad_accum_steps=4), total_steps=12)
  assert "micro-batch" not in caplog.text


def test_the_constant_schedule_warms_up_too():
  # warmup_steps used to be ignored by 'constant' (the base config's 500 included).
  sched = optim.make_schedule(1.0, _cfg(schedule="constant", warmup_steps=4), 100)
  assert [float(sched(i)) for i in (0, 2, 4, 50, 99)] == pytest.approx([0, 0.5, 1, 1, 1])
  sched = optim.make_schedule(1.0, _cfg(schedule="constant", warmup_steps=0), 100)
  assert float(sched(0)) == 1.0


def test_a_constant_schedule_warming_up_over_the_whole_run_is_a_warning(caplog):
  # Since 'constant' warms up, the base config's 500 warmup steps in a shorter run keep
  # its rate below `lr` throughout, as they keep warmup_cosine's (which warned).
  cfg = _cfg(schedule="constant", warmup_steps=500, groups=((".*", 1.0),))
  optim.make_optimizer(cfg, 200)
  assert "the whole run is warmup" in caplog.text
  assert "never reaches" in caplog.text
  caplog.clear()
  optim.make_optimizer(_with(cfg, warmup_steps=0), 200)
  optim.make_optimizer(cfg, 1000)
  assert "warmup" not in caplog.text
