"""The fused CPU AdamW step (meldae_jax/ops/cpu_adamw.py via optim.apply_gradients):
optax's chain's values and state, taken only where it should be, updated in place."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from meldae_jax import optim
from meldae_jax.ops import blas_dot
from meldae_jax.ops import cpu_adamw

pytestmark = pytest.mark.skipif(
    jax.default_backend() != "cpu" or not cpu_adamw.available(),
    reason="no C++ compiler on this host")


@pytest.fixture
def forced_on(monkeypatch):
  """The custom calls also on CPUs without AVX-512 (they fall back to plain loops)."""
  monkeypatch.delenv("MELDAE_CPU_ADAMW", raising=False)
  monkeypatch.setattr(blas_dot, "cpu_has_avx512", lambda: True)


def _cfg(**kw):
  c = ml_collections.ConfigDict(dict(
      groups=(("backbone/frozen/.*", 0.0), ("backbone/.*", 1e-3), (".*", 5e-2)),
      schedule="warmup_cosine", warmup_steps=2, end_lr_factor=0.1, weight_decay=1e-2,
      weight_decay_regex=".*/kernel", b1=0.9, b2=0.999, eps=1e-8, clip_norm=0.5,
      grad_accum_steps=1))
  c.update(kw)
  return c


def _params(seed=0):
  """Leaves of sizes that are and are not multiples of 16, one element, and one over the
  kernel's 16,384-element chunk; a frozen group and leaves with and without decay."""
  rng = np.random.default_rng(seed)
  f = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)  # noqa: E731
  return {"backbone": {"Dense_0": {"kernel": f(40, 30), "bias": f(30)},
                       "big": {"kernel": f(130, 131)},
                       "frozen": {"kernel": f(5, 3), "bias": f(3)}},
          "head": {"kernel": f(3, 17), "bias": f(1), "scale": f(16)}}


def _grads(params, seed):
  """Small gradients on even steps (under the clip norm) and large ones on odd steps."""
  rng = np.random.default_rng(100 + seed)
  scale = 1e-3 if seed % 2 == 0 else 3.0
  return jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape) * scale,
                                            jnp.float32), params)


def _reference(tx):
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state
  return jax.jit(step)


def _fused(tx):
  return jax.jit(lambda params, state, grads: optim.apply_gradients(tx, grads, state,
                                                                     params))


def _runs(tx, params, steps: int, fused_steps: int):
  """`steps` steps from tx.init, the first `fused_steps` of them fused and the rest by
  tx.update, and the same steps all by tx.update: ((params, state), (params, state))."""
  ref, fused = _reference(tx), _fused(tx)
  got = want = (params, tx.init(params))
  for t in range(steps):
    g = _grads(params, t)
    want = ref(*want, g)
    got = (fused if t < fused_steps else ref)(*got, g)
  return got, want


def _uses_call(tx, params, state, grads) -> bool:
  # a new function each time: jit's trace cache would otherwise answer for an old trace
  return "meldae_adamw" in _fused(tx).lower(params, state, grads).as_text()


def _assert_close(got, want):
  """Equal to float32 rounding: the moments' cancellations (b1 m + (1 - b1) g with
  opposite signs) make their small values differ relatively more, so each leaf is
  compared against its own largest magnitude."""
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    w = np.asarray(w)
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6 * max(1e-3, np.abs(w).max()))


@pytest.mark.parametrize("plain", [False, True])
def test_matches_the_optax_chain_step_after_step(forced_on, plain):
  """Both kernels, six steps through the warmup and cosine, the clip on and off: same
  parameters and same optax state (counts, moments, schedule counts) as tx.update."""
  tx, _ = optim.make_optimizer(_cfg(), total_steps=8)
  params = _params()
  ref_p, ref_s = params, tx.init(params)
  got_p, got_s = params, tx.init(params)
  assert _uses_call(tx, got_p, got_s, _grads(params, 0))
  ref, fused = _reference(tx), _fused(tx)
  cpu_adamw.set_plain(plain)
  try:
    for t in range(6):
      g = _grads(params, t)
      ref_p, ref_s = ref(ref_p, ref_s, g)
      got_p, got_s = fused(got_p, got_s, g)
      _assert_close((got_p, got_s), (ref_p, ref_s))
  finally:
    cpu_adamw.set_plain(False)
  # The frozen group did not move; the others did.
  np.testing.assert_array_equal(got_p["backbone"]["frozen"]["kernel"],
                                params["backbone"]["frozen"]["kernel"])
  assert not np.allclose(got_p["head"]["kernel"], params["head"]["kernel"])


def test_either_path_continues_the_others_run(forced_on):
  """Two fused steps then two of tx.update, against four of tx.update: the state the
  fused step writes is the chain's own (a checkpoint does not care which path ran)."""
  tx, _ = optim.make_optimizer(_cfg(clip_norm=0.0, weight_decay=0.0), total_steps=8)
  got, want = _runs(tx, _params(1), steps=4, fused_steps=2)
  _assert_close(got, want)


def test_taken_only_where_it_should_be(forced_on, monkeypatch):
  params = _params()
  grads = _grads(params, 0)
  tx, _ = optim.make_optimizer(_cfg(), total_steps=8)
  state = tx.init(params)
  assert _uses_call(tx, params, state, grads)
  with cpu_adamw.xla_adamw():
    assert not _uses_call(tx, params, state, grads)
  # Gradient accumulation wraps the chain in optax.MultiSteps: optax's path.
  acc, _ = optim.make_optimizer(_cfg(grad_accum_steps=2), total_steps=8)
  assert not _uses_call(acc, params, acc.init(params), grads)
  # A parameter that is not float32.
  half = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
  assert not _uses_call(tx, half, tx.init(half), jax.tree.map(
      lambda g: g.astype(jnp.bfloat16), grads))
  # Any other optax transformation.
  assert not _uses_call(optax.adamw(1e-3), params, optax.adamw(1e-3).init(params), grads)
  monkeypatch.setattr(blas_dot, "cpu_has_avx512", lambda: False)
  assert not _uses_call(tx, params, state, grads)
  monkeypatch.setattr(blas_dot, "cpu_has_avx512", lambda: True)
  monkeypatch.setenv("MELDAE_CPU_ADAMW", "0")
  assert not _uses_call(tx, params, state, grads)


@pytest.mark.parametrize("groups", [
    ((".*", 0.0),),  # everything frozen: nothing moves, nothing counts
    ((".*", 0.0), ("never/.*", 1e-3)),  # and an AdamW group that covers nothing
    (("nothing/.*", 1e-2), ("backbone/.*", 0.0), (".*", 5e-2)),
])
def test_groups_that_cover_nothing_count_their_steps_as_optax_does(forced_on, groups):
  """optax.partition steps every group's state, also one whose regex matches no
  parameter (its count goes up); and with every parameter frozen nothing moves."""
  tx, _ = optim.make_optimizer(_cfg(groups=groups), total_steps=8)
  params = _params()
  got, want = _runs(tx, params, steps=3, fused_steps=3)
  _assert_close(got, want)
  if groups[0] == (".*", 0.0):
    _assert_close(got[0], params)


def test_the_state_is_updated_in_place(forced_on):
  """The call's results alias its parameter and moment operands, and with the state
  donated XLA keeps the step's parameters in the buffers they came in."""
  tx, _ = optim.make_optimizer(_cfg(), total_steps=8)
  params = _params()
  state, grads = tx.init(params), _grads(params, 0)
  step = jax.jit(lambda p, s, g: optim.apply_gradients(tx, g, s, p), donate_argnums=(0, 1))
  hlo = step.lower(params, state, grads).compile().as_text()
  call = next(line for line in hlo.splitlines() if "meldae_adamw" in line)
  assert "output_to_operand_aliasing" in call
  big = params["backbone"]["big"]["kernel"]
  before = big.unsafe_buffer_pointer()
  new_p, _ = step(params, state, grads)
  assert new_p["backbone"]["big"]["kernel"].unsafe_buffer_pointer() == before


def test_global_norm_matches_optax(forced_on):
  grads = _grads(_params(), 1)
  got = jax.jit(optim.global_norm)(grads)
  np.testing.assert_allclose(got, optax.global_norm(grads), rtol=1e-6)
  assert "meldae_sum_squares" in jax.jit(optim.global_norm).lower(grads).as_text()


def test_mismatched_operands_are_an_error(forced_on):
  x = [jnp.ones(3)]
  with pytest.raises(ValueError, match="one of each per leaf"):
    cpu_adamw.adamw_step(jnp.ones((1, len(cpu_adamw.COEFFS))), x, x, x, [])
  with pytest.raises(ValueError, match="coefficients"):
    cpu_adamw.adamw_step(jnp.ones((2, len(cpu_adamw.COEFFS))), x, x, x, x)


def test_calls_say_so_where_the_handlers_are_missing(monkeypatch):
  """Called directly where they could not be built: a clear error, not XLA's 'no FFI
  handler registered' at run time."""
  monkeypatch.setattr(cpu_adamw, "available", lambda: False)
  with pytest.raises(RuntimeError, match="unavailable"):
    cpu_adamw.sum_squares([jnp.ones(3)])
  x = [jnp.ones(3)]
  with pytest.raises(RuntimeError, match="unavailable"):
    cpu_adamw.adamw_step(jnp.ones((1, len(cpu_adamw.COEFFS))), x, x, x, x)


def test_vmap_over_optimisers_matches_optax(forced_on):
  """An ensemble's steps under jax.vmap (the calls had no vmap rule: NotImplementedError):
  each member clipped by its own norm, as optax's chain does."""
  tx, _ = optim.make_optimizer(_cfg(), total_steps=10)
  members = [_params(seed) for seed in (0, 1, 2)]
  params = jax.tree.map(lambda *x: jnp.stack(x), *members)
  grads = jax.tree.map(lambda *x: jnp.stack(x), *[_grads(p, 1) for p in members])
  state = jax.vmap(tx.init)(params)
  step = lambda step_fn: jax.jit(jax.vmap(step_fn))  # noqa: E731
  got = step(lambda p, s, g: optim.apply_gradients(tx, g, s, p))(params, state, grads)
  want = step(lambda p, s, g: _reference(tx)(p, s, g))(params, state, grads)
  _assert_close(got, want)
  assert _uses_call(tx, members[0], tx.init(members[0]), _grads(members[0], 1))
