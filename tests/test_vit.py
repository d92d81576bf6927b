"""ViT frame encoder: variants, shapes, scan/remat, NumPy reference forward."""
import contextlib
import functools
import re

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from meldae_jax.models import gelu
from meldae_jax.models import vit
from meldae_jax.ops import blas_attention
from meldae_jax.ops import blas_dot

# Tiny models: XLA's CPU backend optimisations cost more than they save.
_jit = functools.partial(
    jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def _shapes(model, shape=(2, 32, 32, 3)):
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  return jax.eval_shape(
      lambda x: model.init(jax.random.key(0), x, train=False), x)


def _params(model, shape=(2, 32, 32, 3), seed=1):
  """Random params in the model's tree (cheaper than compiling its init).

  Non-trivial everywhere (biases, cls, LayerNorm) so the reference checks
  every parameter's role.
  """
  rng = np.random.default_rng(seed)
  flat = traverse_util.flatten_dict(nn.unbox(_shapes(model, shape)["params"]))
  out = {}
  for k, s in flat.items():
    noise = rng.standard_normal(s.shape).astype(np.float32)
    out[k] = 1 + 0.1 * noise if k[-1] == "scale" else 0.1 * noise
  return traverse_util.unflatten_dict(out)


@functools.lru_cache(maxsize=None)
def _jitted_apply(variant, train=False, **kw):
  """One compiled forward per configuration (eager dispatch is slow on CPU)."""
  model = vit.ViT(variant, **kw)
  return _jit(lambda p, x, rngs: model.apply(
      {"params": p}, x, train=train, rngs=rngs))


def _apply(params, x, variant="Mu/8", train=False, rng=None, **kw):
  rngs = {"dropout": rng} if rng is not None else {}
  return _jitted_apply(variant, train, **kw)(params, x, rngs)


def _images(shape=(2, 32, 32, 3), seed=2):
  return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


def _unstack(params):
  """Scan-stacked params -> `encoderblock_{i}` params (same values)."""
  flat = traverse_util.flatten_dict(params, sep="/")
  out = {}
  for k, v in flat.items():
    if k.startswith("Transformer/encoderblock/"):
      rest = k[len("Transformer/encoderblock/"):]
      for i in range(v.shape[0]):
        out[f"Transformer/encoderblock_{i}/{rest}"] = v[i]
    else:
      out[k] = v
  return traverse_util.unflatten_dict(out, sep="/")


# --- Independent NumPy forward (float64) from the param arrays. -------------


def _ln(x, p):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-6) * p["scale"] + p["bias"]


def _gelu(x):
  return 0.5 * x * (1 + scipy.special.erf(x / np.sqrt(2)))


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def np_vit(params, x, patch):
  """Reference ViT forward on unstacked params in our (big_vision) layout."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  n, hh, ww, c = x.shape
  h, w = hh // patch, ww // patch
  xp = x.astype(np.float64).reshape(n, h, patch, w, patch, c)
  tok = np.einsum("niyjxc,yxcd->nijd", xp, p["embedding"]["kernel"])
  tok = tok.reshape(n, h * w, -1) + p["embedding"]["bias"]
  cls = np.repeat(p["cls"], n, axis=0)
  z = np.concatenate([cls, tok], axis=1) + p["pos_embedding"]
  t = p["Transformer"]
  i = 0
  while f"encoderblock_{i}" in t:
    b = t[f"encoderblock_{i}"]
    a = b["MultiHeadDotProductAttention_0"]
    y = _ln(z, b["LayerNorm_0"])
    q, k, v = (np.einsum("nld,dhk->nlhk", y, a[m]["kernel"]) + a[m]["bias"]
               for m in ("query", "key", "value"))
    att = _softmax(np.einsum("nqhk,nshk->nhqs", q, k) / np.sqrt(q.shape[-1]))
    o = np.einsum("nhqs,nshk->nqhk", att, v)
    z = z + np.einsum("nqhk,hkd->nqd", o, a["out"]["kernel"]) + a["out"]["bias"]
    m = b["MlpBlock_0"]
    y = _ln(z, b["LayerNorm_1"])
    y = _gelu(y @ m["Dense_0"]["kernel"] + m["Dense_0"]["bias"])
    z = z + y @ m["Dense_1"]["kernel"] + m["Dense_1"]["bias"]
    i += 1
  z = _ln(z, t["encoder_norm"])
  return z[:, 0], z[:, 1:].reshape(n, h, w, -1)


# --- Tests. -----------------------------------------------------------------


@pytest.mark.parametrize("name,dims", [
    ("Ti", (192, 12, 768, 3)), ("S", (384, 12, 1536, 6)),
    ("B", (768, 12, 3072, 12)), ("L", (1024, 24, 4096, 16)),
    ("Mu", (64, 2, 128, 2))])
@pytest.mark.parametrize("patch", [16, 8, 14])
def test_vit_dims(name, dims, patch):
  got = vit.vit_dims(f"{name}/{patch}")
  assert (got["width"], got["depth"], got["mlp_dim"], got["num_heads"]) == dims
  assert got["patch"] == patch


@pytest.mark.parametrize("bad", ["X/16", "B", "B/", "B/x", "B/0", "b/16"])
def test_vit_dims_unknown(bad):
  with pytest.raises(ValueError, match=r"Ti/<patch>.*L/<patch>"):
    vit.vit_dims(bad)


@pytest.mark.parametrize("variant", [
    "Ti/16", "S/16", "B/16", "L/16", "Ti/8", "S/8", "B/8", "L/8", "Mu/8"])
def test_shapes_eval_shape(variant):
  dims = vit.vit_dims(variant)
  model = vit.ViT(variant)
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(
      lambda x: model.init(jax.random.key(0), x, train=False), x)
  cls, patches = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=False), variables, x)
  g = 32 // dims["patch"]
  d = dims["width"]
  assert cls.shape == (2, d)
  assert patches.shape == (2, g, g, d)
  params = nn.unbox(variables["params"])
  assert params["pos_embedding"].shape == (1, 1 + g * g, d)
  assert params["Transformer"]["encoderblock"]["LayerNorm_0"]["scale"].shape \
      == (dims["depth"], d)


def test_param_count_b16_matches_published():
  """ViT-B/16 @224 without head has 85,798,656 params (timm / the paper)."""
  model = vit.ViT("B/16")
  x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  variables = jax.eval_shape(
      lambda x: model.init(jax.random.key(0), x, train=False), x)
  sizes = [np.prod(l.shape) for l in jax.tree.leaves(nn.unbox(variables))]
  assert sum(sizes) == 85_798_656


@pytest.mark.parametrize("variant,shape", [
    ("Mu/8", (2, 32, 48, 3)), ("Ti/16", (2, 32, 32, 3))])
def test_matches_numpy_reference(variant, shape):
  dims = vit.vit_dims(variant)
  model = vit.ViT(variant, scan=False)
  params = _params(model, shape)
  x = _images(shape)
  cls, patches = _apply(params, x, variant, scan=False)
  ref_cls, ref_patches = np_vit(params, x, dims["patch"])
  assert patches.shape == (shape[0], shape[1] // dims["patch"],
                           shape[2] // dims["patch"], dims["width"])
  np.testing.assert_allclose(cls, ref_cls, atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(patches, ref_patches, atol=1e-4, rtol=1e-4)


def test_scan_equals_unrolled():
  stacked = _params(vit.ViT("Mu/8", scan=True))
  x = _images()
  out_scan = _apply(stacked, x)
  unrolled = _unstack(stacked)
  # Same tree as the unrolled model's own init.
  assert (jax.tree.structure(unrolled)
          == jax.tree.structure(_params(vit.ViT("Mu/8", scan=False))))
  out_loop = _apply(unrolled, x, scan=False)
  for a, b in zip(out_scan, out_loop):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
  ref = np_vit(unrolled, x, 8)
  np.testing.assert_allclose(out_scan[1], ref[1], atol=1e-4, rtol=1e-4)


def test_remat_policies_same_outputs_and_grads():
  params = _params(vit.ViT("Mu/8"))
  x = _images()

  def run(policy):
    model = vit.ViT("Mu/8", remat_policy=policy)

    def loss(p):
      cls, patches = model.apply({"params": p}, x, train=False)
      return jnp.sum(cls ** 2) + jnp.sum(jnp.sin(patches)), (cls, patches)

    (_, out), grads = _jit(jax.value_and_grad(loss, has_aux=True))(params)
    return out, grads

  base_out, base_grads = run("none")
  for policy in ("full", "dots", "dots_no_batch"):
    out, grads = run(policy)
    for a, b in zip(out, base_out):
      np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5,
                                                         rtol=1e-5),
                 grads, base_grads)
  out = _apply(_unstack(params), x, scan=False, remat_policy="full")
  np.testing.assert_allclose(out[1], base_out[1], atol=1e-5, rtol=1e-5)


def _saved_elements(capsys, policy, sgemm: bool, cpu_attention: bool) -> int:
  """How many values (array elements) a Mu/8 ViT's backward keeps under `policy`, with
  the Dense matmuls by sgemm or XLA's dot, the attention by its custom calls or XLA's."""
  x = jnp.asarray(_images())
  model = vit.ViT("Mu/8", scan=False, remat_policy=policy)
  params = _params(model, x.shape)

  def loss(p):
    cls, patches = model.apply({"params": p}, x, train=False)
    return jnp.sum(jnp.tanh(cls)) + jnp.sum(jnp.tanh(patches))

  capsys.readouterr()
  with contextlib.ExitStack() as stack:
    stack.enter_context(blas_dot.sgemm_dots() if sgemm else blas_dot.xla_dots())
    if not cpu_attention:
      stack.enter_context(blas_attention.xla_attention())
    jax.ad_checkpoint.print_saved_residuals(loss, params)
  lines = [l for l in capsys.readouterr().out.splitlines() if "from the argument" not in l]
  shapes = [re.match(r"\w+\[([\d,]*)\]", l).group(1) for l in lines]
  return sum(int(np.prod([int(d) for d in s.split(",") if d])) for s in shapes)


@pytest.mark.parametrize("sgemm,cpu_attention", [(True, True), (True, False),
                                                 (False, True)])
def test_dots_policies_save_the_matmuls_whatever_runs_them(capsys, sgemm, cpu_attention):
  """'dots' saves every matmul's output and 'dots_no_batch' the unbatched ones, as
  JAX's policies do over XLA's dots, also where custom calls run them (they name their
  outputs; a policy cannot see into a custom call, so 'dots' kept nothing there)."""
  if (sgemm or cpu_attention) and not blas_dot.available():
    pytest.skip("no sgemm custom call here")
  counts = {}
  for policy in ("full", "dots", "dots_no_batch"):
    xla = _saved_elements(capsys, policy, sgemm=False, cpu_attention=False)
    ours = _saved_elements(capsys, policy, sgemm, cpu_attention)
    assert ours == xla, policy
    counts[policy] = ours
  assert counts["full"] < counts["dots_no_batch"] < counts["dots"]


def test_unknown_remat_policy():
  with pytest.raises(ValueError, match="dots_no_batch"):
    _shapes(vit.ViT("Mu/8", remat_policy="everything"))


def test_bf16_compute_keeps_f32_params():
  params = _params(vit.ViT("Mu/8"))
  x = _images()
  model16 = vit.ViT("Mu/8", dtype=jnp.bfloat16)
  fresh = nn.unbox(_shapes(model16))
  assert all(l.dtype == jnp.float32 for l in jax.tree.leaves(fresh))
  cls, patches = _apply(params, x, dtype=jnp.bfloat16)
  assert cls.dtype == jnp.bfloat16 and patches.dtype == jnp.bfloat16
  ref = _apply(params, x)
  np.testing.assert_allclose(np.asarray(patches, np.float32), ref[1], atol=0.15)
  assert np.all(np.isfinite(np.asarray(cls, np.float32)))


def test_logical_axis_names():
  model = vit.ViT("Mu/8")
  variables = jax.eval_shape(lambda x: model.init(
      jax.random.key(0), x, train=False), jnp.zeros((1, 32, 32, 3)))
  flat = traverse_util.flatten_dict(variables["params"], sep="/")
  names = {k: v.names for k, v in flat.items() if isinstance(v, nn.Partitioned)}
  blk = "Transformer/encoderblock/"
  mha = blk + "MultiHeadDotProductAttention_0/"
  assert names["embedding/kernel"] == (None, None, None, "embed")
  assert names["pos_embedding"] == (None, None, "embed")
  for m in ("query", "key", "value"):
    assert names[mha + m + "/kernel"] == ("layers", "embed", "heads", "kv")
  assert names[mha + "out/kernel"] == ("layers", "heads", "kv", "embed")
  assert names[blk + "MlpBlock_0/Dense_0/kernel"] == ("layers", "embed", "mlp")
  assert names[blk + "MlpBlock_0/Dense_1/kernel"] == ("layers", "mlp", "embed")
  # Every annotation matches its array's rank.
  for k, v in flat.items():
    if isinstance(v, nn.Partitioned):
      assert len(v.names) == v.value.ndim, k


def test_dropout_only_in_train():
  params = _params(vit.ViT("Mu/8", dropout=0.5))
  x = _images()
  ev1 = _apply(params, x, dropout=0.5)
  ev2 = _apply(params, x, dropout=0.5)
  np.testing.assert_array_equal(ev1[1], ev2[1])
  tr1 = _apply(params, x, train=True, rng=jax.random.key(1), dropout=0.5)
  tr2 = _apply(params, x, train=True, rng=jax.random.key(2), dropout=0.5)
  assert not np.allclose(tr1[1], tr2[1])
  assert not np.allclose(tr1[1], ev1[1])


def test_real_init():
  """The initialisers themselves: zeros cls, unit LayerNorm, posemb scale."""
  model = vit.ViT("Mu/8")
  init = _jit(functools.partial(model.init, train=False))
  variables = init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  p = nn.unbox(variables["params"])
  assert isinstance(variables["params"]["cls"], nn.Partitioned)
  np.testing.assert_array_equal(p["cls"], 0)
  np.testing.assert_array_equal(
      p["Transformer"]["encoderblock"]["LayerNorm_0"]["scale"], 1)
  assert p["pos_embedding"].shape == (1, 65, 64)
  assert 0.8 < np.std(p["pos_embedding"]) * np.sqrt(64) < 1.2
  q = p["Transformer"]["encoderblock"]["MultiHeadDotProductAttention_0"]
  assert not np.allclose(q["query"]["kernel"][0], q["query"]["kernel"][1])


@pytest.mark.parametrize("scan", [False, True])
def test_remat_lowers_backward_memory(scan):
  """Full remat must shrink what the backward pass keeps, scanned or unrolled.

  Unrolled blocks need `prevent_cse=True`: without it XLA merges the recomputation with
  the forward pass and the step kept more memory than without remat (S112, T=16).
  """
  x = jnp.asarray(_images((64, 32, 32, 3)))

  def temp_bytes(policy):
    model = vit.ViT("Mu/8", scan=scan, remat_policy=policy)
    params = _params(model, x.shape)

    def loss(p):
      cls, patches = model.apply({"params": p}, x, train=False)
      return jnp.sum(jnp.tanh(cls)) + jnp.sum(jnp.tanh(patches))

    compiled = jax.jit(jax.grad(loss)).lower(params).compile(
        {"xla_backend_optimization_level": 0})
    return compiled.memory_analysis().temp_size_in_bytes

  assert temp_bytes("full") < 0.8 * temp_bytes("none")


def test_hmlp_stem_is_patchwise_and_nonlinear():
  """Each output patch depends on its own pixels only, and not linearly."""
  stem = vit.HMlpStem(patch=16, width=8, hidden=4)
  x = jax.random.normal(jax.random.key(0), (1, 32, 48, 3))
  params = stem.init(jax.random.key(1), x)
  f = jax.jit(lambda v: stem.apply(params, v))
  y = f(x)
  assert y.shape == (1, 2, 3, 8)
  bumped = x.at[0, 20, 5, 1].add(1.0)  # a pixel of patch (row 1, col 0)
  changed = np.abs(np.asarray(f(bumped) - y)).max(-1)[0] > 1e-6
  np.testing.assert_array_equal(changed, [[False, False, False], [True, False, False]])
  # Not linear: f(2x) != 2 f(x) beyond the bias, unlike the 'patch' embedding.
  zero = f(jnp.zeros_like(x))
  assert not np.allclose(f(2 * x) - zero, 2 * (y - zero), atol=1e-3)


def test_hmlp_stem_leaves_out_partial_patches():
  """As the 'patch' stem (a VALID strided conv): 40x35 pixels are 2x2 patches of 16."""
  stem = vit.HMlpStem(patch=16, width=8, hidden=4)
  x = jax.random.normal(jax.random.key(0), (1, 40, 35, 3))
  params = stem.init(jax.random.key(1), x)
  y = stem.apply(params, x)
  assert y.shape == (1, 2, 2, 8)
  np.testing.assert_allclose(y, stem.apply(params, x[:, :32, :32]), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("patch", [8, 16, 32])
def test_vit_hmlp_stem_shapes(patch):
  model = vit.ViT(f"Mu/{patch}", stem="hmlp", stem_hidden=8)
  x = jnp.zeros((2, 64, 64, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  assert "hmlp_stem" in variables["params"] and "embedding" not in variables["params"]
  cls, patches = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
  assert cls.shape == (2, 64) and patches.shape == (2, 64 // patch, 64 // patch, 64)


@pytest.mark.parametrize("stem,patch,match", [("hmlp", 12, "4 \\* 2\\*\\*k"),
                                              ("conv", 16, "unknown ViT stem")])
def test_vit_bad_stem(stem, patch, match):
  model = vit.ViT(f"Mu/{patch}", stem=stem)
  with pytest.raises(ValueError, match=match):
    model.init(jax.random.key(0), jnp.zeros((1, 48, 48, 3)), train=False)


@pytest.mark.parametrize("stem", ["patch", "hmlp"])
def test_frames_smaller_than_a_patch_are_an_error(stem):
  """With no patch the ViT would output its CLS token alone, whatever the frame."""
  model = vit.ViT("Mu/16", stem=stem)
  with pytest.raises(ValueError, match="8x20 frames are smaller than one 16-pixel patch"):
    model.init(jax.random.key(0), jnp.zeros((1, 8, 20, 3)), train=False)


@pytest.mark.parametrize("size", [(32, 32), (40, 35)])
def test_patch_embed_is_the_strided_conv(size):
  """Same parameters (names, shapes, initial values) and function as nn.Conv."""
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, *size, 3), np.float32))
  ours = vit.PatchEmbed(24, 8)
  conv = nn.Conv(24, (8, 8), strides=(8, 8), padding="VALID",
                 kernel_init=nn.initializers.lecun_normal())
  p_ours = nn.unbox(ours.init(jax.random.key(3), x))
  p_conv = conv.init(jax.random.key(3), x)
  jax.tree.map(np.testing.assert_array_equal, p_ours, p_conv)
  p = jax.tree.map(lambda a: a + 0.1, p_conv)  # a non-zero bias too
  np.testing.assert_allclose(jax.jit(ours.apply)(p, x), conv.apply(p, x),
                             rtol=1e-5, atol=1e-5)


def test_exact_gelu_matches_jax_gelu():
  x = jnp.linspace(-12.0, 12.0, 4001, dtype=jnp.float32)
  ref = lambda x: jax.nn.gelu(x, approximate=False)  # noqa: E731
  np.testing.assert_allclose(gelu.exact_gelu(x), ref(x), rtol=1e-6, atol=1e-6)
  grad = jax.vmap(jax.grad(gelu.exact_gelu))(x)
  np.testing.assert_allclose(grad, jax.vmap(jax.grad(ref))(x), rtol=1e-5, atol=1e-6)
  # Not a tanh approximation (which is 1e-4 off around |x| ~ 2).
  assert float(jnp.max(jnp.abs(gelu.exact_gelu(x) - jax.nn.gelu(x)))) > 1e-4


def test_self_attention_is_flax_attention_with_one_qkv_matmul():
  """`attention.SelfAttention` (one (D, 3D) projection): flax's parameters, initial
  values and logical axes, and its outputs and gradients."""
  from meldae_jax.models import attention  # pylint: disable=g-import-not-at-top
  xavier = nn.initializers.xavier_uniform()
  inits = dict(kernel_init=nn.with_logical_partitioning(xavier, ("embed", "heads", "kv")),
               out_kernel_init=nn.with_logical_partitioning(xavier,
                                                            ("heads", "kv", "embed")))
  name = "MultiHeadDotProductAttention_0"

  class Ref(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.MultiHeadDotProductAttention(num_heads=3, deterministic=True, name=name,
                                             **inits)(x, x)

  class Ours(nn.Module):
    @nn.compact
    def __call__(self, x):
      return attention.SelfAttention(num_heads=3, name=name, **inits)(x)

  x = jax.random.normal(jax.random.key(1), (2, 10, 24))
  ref_vars, our_vars = Ref().init(jax.random.key(0), x), Ours().init(jax.random.key(0), x)
  boxed = lambda p: isinstance(p, nn.LogicallyPartitioned)  # noqa: E731
  names = lambda v: jax.tree.map(lambda p: p.names if boxed(p) else None, v,  # noqa: E731
                                 is_leaf=boxed)
  assert names(our_vars) == names(ref_vars)
  jax.tree.map(np.testing.assert_array_equal, nn.unbox(ref_vars), nn.unbox(our_vars))
  # Non-zero biases, so that a bias added to the wrong projection shows.
  params = jax.tree.map(
      lambda p: p + 0.1 * jax.random.normal(jax.random.key(p.size), p.shape),
      nn.unbox(ref_vars))
  np.testing.assert_allclose(Ours().apply(params, x), Ref().apply(params, x),
                             rtol=1e-5, atol=1e-5)
  w = jax.random.normal(jax.random.key(2), x.shape)
  grad = lambda m: jax.grad(lambda p, x: jnp.sum(w * m.apply(p, x)), (0, 1))(params, x)  # noqa: E731
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-5),
               grad(Ours()), grad(Ref()))
  with pytest.raises(ValueError, match="multiple of num_heads"):
    attention.SelfAttention(num_heads=5).init(jax.random.key(0), x)
