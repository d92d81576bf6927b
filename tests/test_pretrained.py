"""Pretrained ViT loading: every on-disk naming against a NumPy forward.

Each test writes a tiny checkpoint (width 64, 2 blocks, 2 heads, 8px patches)
in one naming and layout, and a NumPy forward computed directly from those
arrays in their own convention (torch Linear `x @ W.T`, fused timm qkv, OIHW
conv, big_vision's posemb-before-cls, ...) must match the loaded Flax model.
"""
import functools
import re

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
import scipy.ndimage
import scipy.special

from meldae_jax.models import pretrained
from meldae_jax.models import vit

VARIANT = "Mu/8"
D, HEADS, MLP, DEPTH, P = 64, 2, 128, 2, 8
IMG = 32
MHA = "MultiHeadDotProductAttention_0"

_jit = functools.partial(
    jax.jit, compiler_options={"xla_backend_optimization_level": 0})


# --- Model side. --------------------------------------------------------------


def _init_params(scan, seed=0):
  """Boxed (logically partitioned) params, as `model.init` returns them."""
  model = vit.ViT(VARIANT, scan=scan)
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, IMG, IMG, 3)), train=False))["params"]
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda s: 0.02 * rng.standard_normal(s.shape).astype(s.dtype), shapes)


@functools.lru_cache(maxsize=None)
def _forward_fn(scan):
  model = vit.ViT(VARIANT, scan=scan)
  return _jit(lambda p, x: model.apply({"params": p}, x, train=False))


def _forward(params, x, scan):
  return _forward_fn(scan)(nn.unbox(params), x)


def _images(n=2, seed=3):
  return np.random.default_rng(seed).uniform(
      -1, 1, (n, IMG, IMG, 3)).astype(np.float32)


def _flat(params):
  return traverse_util.flatten_dict(nn.unbox(params), sep="/")


# --- Checkpoints, each in its own naming and layout. -------------------------


class _Rand:

  def __init__(self, seed):
    self.rng = np.random.default_rng(seed)

  def w(self, *shape, scale=0.1):
    return (scale * self.rng.standard_normal(shape)).astype(np.float32)

  def ln(self, *shape):
    return (1 + self.w(*shape)), self.w(*shape)


def timm_ckpt(seed=0, grid=IMG // P, width=D, depth=DEPTH, qkv_bias=True):
  r, d = _Rand(seed), width
  ck = {"cls_token": r.w(1, 1, d), "pos_embed": r.w(1, 1 + grid * grid, d),
        "patch_embed.proj.weight": r.w(d, 3, P, P),
        "patch_embed.proj.bias": r.w(d)}
  for i in range(depth):
    b = f"blocks.{i}."
    ck[b + "norm1.weight"], ck[b + "norm1.bias"] = r.ln(d)
    ck[b + "attn.qkv.weight"] = r.w(3 * d, d)
    if qkv_bias:
      ck[b + "attn.qkv.bias"] = r.w(3 * d)
    ck[b + "attn.proj.weight"], ck[b + "attn.proj.bias"] = r.w(d, d), r.w(d)
    ck[b + "norm2.weight"], ck[b + "norm2.bias"] = r.ln(d)
    ck[b + "mlp.fc1.weight"], ck[b + "mlp.fc1.bias"] = r.w(MLP, d), r.w(MLP)
    ck[b + "mlp.fc2.weight"], ck[b + "mlp.fc2.bias"] = r.w(d, MLP), r.w(d)
  ck["norm.weight"], ck["norm.bias"] = r.ln(d)
  ck["head.weight"], ck["head.bias"] = r.w(10, d), r.w(10)
  return ck


def hf_ckpt(seed=1, prefix="vit."):
  r, g = _Rand(seed), IMG // P
  e = prefix + "embeddings."
  ck = {e + "cls_token": r.w(1, 1, D),
        e + "position_embeddings": r.w(1, 1 + g * g, D),
        e + "patch_embeddings.projection.weight": r.w(D, 3, P, P),
        e + "patch_embeddings.projection.bias": r.w(D)}
  for i in range(DEPTH):
    b = f"{prefix}encoder.layer.{i}."
    ck[b + "layernorm_before.weight"], ck[b + "layernorm_before.bias"] = r.ln(D)
    for m in ("query", "key", "value"):
      ck[b + f"attention.attention.{m}.weight"] = r.w(D, D)
      ck[b + f"attention.attention.{m}.bias"] = r.w(D)
    ck[b + "attention.output.dense.weight"] = r.w(D, D)
    ck[b + "attention.output.dense.bias"] = r.w(D)
    ck[b + "layernorm_after.weight"], ck[b + "layernorm_after.bias"] = r.ln(D)
    ck[b + "intermediate.dense.weight"] = r.w(MLP, D)
    ck[b + "intermediate.dense.bias"] = r.w(MLP)
    ck[b + "output.dense.weight"], ck[b + "output.dense.bias"] = (
        r.w(D, MLP), r.w(D))
  ck[prefix + "layernorm.weight"], ck[prefix + "layernorm.bias"] = r.ln(D)
  ck[prefix + "pooler.dense.weight"] = r.w(D, D)
  ck["classifier.weight"], ck["classifier.bias"] = r.w(10, D), r.w(10)
  return ck


def _bv_block(r, lead=()):
  """One big_vision block (leading `lead` dims for scan-stacked ones)."""
  hd = D // HEADS
  blk = {}
  for ln in ("LayerNorm_0", "LayerNorm_1"):
    blk[f"{ln}/scale"], blk[f"{ln}/bias"] = r.ln(*lead, D)
  for m in ("query", "key", "value"):
    blk[f"{MHA}/{m}/kernel"] = r.w(*lead, D, HEADS, hd)
    blk[f"{MHA}/{m}/bias"] = r.w(*lead, HEADS, hd)
  blk[f"{MHA}/out/kernel"] = r.w(*lead, HEADS, hd, D)
  blk[f"{MHA}/out/bias"] = r.w(*lead, D)
  blk["MlpBlock_0/Dense_0/kernel"] = r.w(*lead, D, MLP)
  blk["MlpBlock_0/Dense_0/bias"] = r.w(*lead, MLP)
  blk["MlpBlock_0/Dense_1/kernel"] = r.w(*lead, MLP, D)
  blk["MlpBlock_0/Dense_1/bias"] = r.w(*lead, D)
  return blk


def bv_ckpt(seed=2, stacked=True):
  """Current big_vision: posemb without cls slot, blocks maybe scan-stacked."""
  r, g = _Rand(seed), IMG // P
  ck = {"embedding/kernel": r.w(P, P, 3, D), "embedding/bias": r.w(D),
        "cls": r.w(1, 1, D), "pos_embedding": r.w(1, g * g, D)}
  if stacked:
    for k, v in _bv_block(r, (DEPTH,)).items():
      ck[f"Transformer/encoderblock/{k}"] = v
  else:
    for i in range(DEPTH):
      for k, v in _bv_block(r).items():
        ck[f"Transformer/encoderblock_{i}/{k}"] = v
  ck["Transformer/encoder_norm/scale"], ck["Transformer/encoder_norm/bias"] = (
      r.ln(D))
  ck["head/kernel"], ck["head/bias"] = r.w(D, 10), r.w(10)
  return ck


_AUGREG_NAMES = {f"{MHA}/": "MultiHeadDotProductAttention_1/",
                 "LayerNorm_1/": "LayerNorm_2/", "MlpBlock_0/": "MlpBlock_3/"}


def augreg_ckpt(seed=3):
  """vit_jax / AugReg names: posembed_input with cls slot, old block names."""
  r, g = _Rand(seed), IMG // P
  ck = {"embedding/kernel": r.w(P, P, 3, D), "embedding/bias": r.w(D),
        "cls": r.w(1, 1, D),
        "Transformer/posembed_input/pos_embedding": r.w(1, 1 + g * g, D)}
  for i in range(DEPTH):
    for k, v in _bv_block(r).items():
      for new, old in _AUGREG_NAMES.items():
        k = k.replace(new, old)
      ck[f"Transformer/encoderblock_{i}/{k}"] = v
  ck["Transformer/encoder_norm/scale"], ck["Transformer/encoder_norm/bias"] = (
      r.ln(D))
  ck["pre_logits/kernel"], ck["pre_logits/bias"] = r.w(D, D), r.w(D)
  ck["head/kernel"], ck["head/bias"] = r.w(D, 10), r.w(10)
  return ck


# --- NumPy forwards, straight from each checkpoint's own arrays. --------------


def _ln(x, scale, bias):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-6) * scale + bias


def _gelu(x):
  return 0.5 * x * (1 + scipy.special.erf(x / np.sqrt(2)))


def _attend(q, k, v):
  """(n, L, H, hd) each -> (n, L, H*hd), softmax(q k^T / sqrt(hd)) v."""
  s = np.einsum("nqhk,nshk->nhqs", q, k) / np.sqrt(q.shape[-1])
  s = np.exp(s - s.max(-1, keepdims=True))
  s /= s.sum(-1, keepdims=True)
  o = np.einsum("nhqs,nshk->nqhk", s, v)
  return o.reshape(o.shape[0], o.shape[1], -1)


def _patchify(x):
  n, hh, ww, c = x.shape
  return x.astype(np.float64).reshape(n, hh // P, P, ww // P, P, c)


def _split(t):
  n, l, _ = t.shape
  return t.reshape(n, l, HEADS, -1)


def np_torch_vit(ck, x, hf=False):
  """timm / HF ViT forward with torch conventions (Linear: x @ W.T + b)."""
  c = {k: v.astype(np.float64) for k, v in ck.items()}
  lin = lambda t, name: t @ c[name + ".weight"].T + c[name + ".bias"]
  lnm = lambda t, name: _ln(t, c[name + ".weight"], c[name + ".bias"])
  pre = ("vit." if "vit.embeddings.cls_token" in c else "") if hf else ""
  if hf:
    e = pre + "embeddings."
    conv, cls, pos = (e + "patch_embeddings.projection", e + "cls_token",
                      e + "position_embeddings")
  else:
    conv, cls, pos = "patch_embed.proj", "cls_token", "pos_embed"
  xp = _patchify(x)  # (n, i, y, j, x, c); OIHW weight is (d, c, y, x).
  tok = np.einsum("niyjxc,dcyx->nijd", xp, c[conv + ".weight"])
  n, h, w, _ = tok.shape
  tok = tok.reshape(n, h * w, -1) + c[conv + ".bias"]
  z = np.concatenate([np.repeat(c[cls], n, 0), tok], axis=1) + c[pos]
  for i in range(DEPTH):
    if hf:
      b = f"{pre}encoder.layer.{i}."
      y = lnm(z, b + "layernorm_before")
      q, k, v = (_split(lin(y, b + f"attention.attention.{m}"))
                 for m in ("query", "key", "value"))
      z = z + lin(_attend(q, k, v), b + "attention.output.dense")
      y = lnm(z, b + "layernorm_after")
      z = z + lin(_gelu(lin(y, b + "intermediate.dense")), b + "output.dense")
    else:
      b = f"blocks.{i}."
      y = lnm(z, b + "norm1")
      qkv = y @ c[b + "attn.qkv.weight"].T
      if b + "attn.qkv.bias" in c:
        qkv = qkv + c[b + "attn.qkv.bias"]
      qkv = qkv.reshape(n, -1, 3, HEADS, D // HEADS)  # timm's own reshape.
      z = z + lin(_attend(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]),
                  b + "attn.proj")
      y = lnm(z, b + "norm2")
      z = z + lin(_gelu(lin(y, b + "mlp.fc1")), b + "mlp.fc2")
  z = lnm(z, pre + "layernorm" if hf else "norm")
  return z[:, 0], z[:, 1:].reshape(n, h, w, -1)


def np_bv_vit(ck, x):
  """big_vision / vit_jax forward in their layouts and naming."""
  c = {k: v.astype(np.float64) for k, v in ck.items()}

  def get(i, sub):
    stacked = f"Transformer/encoderblock/{sub}"
    if stacked in c:
      return c[stacked][i]
    for new, old in _AUGREG_NAMES.items():
      if f"Transformer/encoderblock_{i}/{sub.replace(new, old)}" in c:
        sub = sub.replace(new, old)
    return c[f"Transformer/encoderblock_{i}/{sub}"]

  tok = np.einsum("niyjxc,yxcd->nijd", _patchify(x), c["embedding/kernel"])
  n, h, w, _ = tok.shape
  tok = tok.reshape(n, h * w, -1) + c["embedding/bias"]
  cls = np.repeat(c["cls"], n, 0)
  if "pos_embedding" in c:  # big_vision: posemb on patches, then cls.
    z = np.concatenate([cls, tok + c["pos_embedding"]], axis=1)
  else:  # vit_jax: cls first, then posemb with a cls slot.
    z = (np.concatenate([cls, tok], axis=1)
         + c["Transformer/posembed_input/pos_embedding"])
  for i in range(DEPTH):
    g = functools.partial(get, i)
    y = _ln(z, g("LayerNorm_0/scale"), g("LayerNorm_0/bias"))
    q, k, v = (np.einsum("nld,dhk->nlhk", y, g(f"{MHA}/{m}/kernel"))
               + g(f"{MHA}/{m}/bias") for m in ("query", "key", "value"))
    o = _attend(q, k, v)
    out_k = g(f"{MHA}/out/kernel").reshape(D, D)
    z = z + o @ out_k + g(f"{MHA}/out/bias")
    y = _ln(z, g("LayerNorm_1/scale"), g("LayerNorm_1/bias"))
    y = _gelu(y @ g("MlpBlock_0/Dense_0/kernel") + g("MlpBlock_0/Dense_0/bias"))
    z = z + y @ g("MlpBlock_0/Dense_1/kernel") + g("MlpBlock_0/Dense_1/bias")
  z = _ln(z, c["Transformer/encoder_norm/scale"],
          c["Transformer/encoder_norm/bias"])
  return z[:, 0], z[:, 1:].reshape(n, h, w, -1)


def _save(tmp_path, ck, fmt):
  path = str(tmp_path / f"ckpt.{fmt}")
  if fmt == "safetensors":
    safetensors.numpy.save_file(ck, path)
  else:
    np.savez(path, **ck)
  return path


# --- Tests. -------------------------------------------------------------------

CASES = {
    "timm-safetensors": (timm_ckpt, "safetensors", np_torch_vit, ("head.",)),
    "timm-npz": (timm_ckpt, "npz", np_torch_vit, ("head.",)),
    "hf-safetensors": (hf_ckpt, "safetensors",
                       functools.partial(np_torch_vit, hf=True),
                       ("classifier.", "pooler.")),
    "hf-npz-noprefix": (functools.partial(hf_ckpt, prefix=""), "npz",
                        functools.partial(np_torch_vit, hf=True),
                        ("classifier.", "pooler.")),
    "big_vision-stacked-npz": (bv_ckpt, "npz", np_bv_vit, ("head/",)),
    "big_vision-unstacked-npz": (functools.partial(bv_ckpt, stacked=False),
                                 "npz", np_bv_vit, ("head/",)),
    "augreg-npz": (augreg_ckpt, "npz", np_bv_vit, ("head/", "pre_logits/")),
}


@pytest.mark.parametrize("scan", [True, False], ids=["scan", "unrolled"])
@pytest.mark.parametrize("case", list(CASES))
def test_loaded_model_matches_checkpoint_forward(tmp_path, case, scan):
  make, ext, reference, heads = CASES[case]
  ck = make()
  path = _save(tmp_path, ck, ext)
  init = _init_params(scan)
  logs = []
  params, report = pretrained.load_vit_params(
      init, path, variant=VARIANT, log=logs.append)

  # Same tree, partitioning boxes kept.
  assert jax.tree.structure(params, is_leaf=nn.meta.is_axis_metadata) == \
      jax.tree.structure(init, is_leaf=nn.meta.is_axis_metadata)
  assert report["not_in_checkpoint"] == [] and report["dont_load"] == []
  assert sorted(report["loaded"]) == sorted(_flat(init))
  head_names = [k for k in ck if k.replace("vit.", "").startswith(heads)]
  assert head_names and sorted(report["skipped"]) == sorted(head_names)
  assert any(head_names[0] in line for line in logs)

  x = _images()
  cls, patches = _forward(params, x, scan)
  ref_cls, ref_patches = reference(ck, x)
  np.testing.assert_allclose(cls, ref_cls, atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(patches, ref_patches, atol=1e-4, rtol=1e-4)


def test_big_vision_posemb_gets_zero_cls_slot(tmp_path):
  ck = bv_ckpt()
  params, _ = pretrained.load_vit_params(
      _init_params(True), _save(tmp_path, ck, "npz"), variant=VARIANT)
  pe = _flat(params)["pos_embedding"]
  np.testing.assert_array_equal(pe[:, 0], 0)
  np.testing.assert_array_equal(pe[:, 1:], ck["pos_embedding"])


@pytest.mark.parametrize("grid", [8, 2])
def test_posemb_resampled_to_model_grid(tmp_path, grid):
  ck = timm_ckpt(grid=grid)  # 64px (or 16px) checkpoint into a 32px model.
  logs = []
  params, report = pretrained.load_vit_params(
      _init_params(True), _save(tmp_path, ck, "safetensors"),
      variant=VARIANT, log=logs.append)
  pe = _flat(params)["pos_embedding"]
  g = IMG // P
  assert pe.shape == (1, 1 + g * g, D)
  np.testing.assert_array_equal(pe[:, 0], ck["pos_embed"][:, 0])
  old = ck["pos_embed"][0, 1:].reshape(grid, grid, D)
  want = scipy.ndimage.zoom(old, (g / grid, g / grid, 1), order=1)
  np.testing.assert_allclose(pe[0, 1:], want.reshape(g * g, D), atol=1e-6)
  assert f"{grid}x{grid} -> {g}x{g}" in report["posemb"]
  assert any("resampled" in line for line in logs)


def test_dont_load_keeps_init(tmp_path):
  init = _init_params(True)
  logs = []
  params, report = pretrained.load_vit_params(
      init, _save(tmp_path, timm_ckpt(), "npz"), variant=VARIANT,
      dont_load=("cls", r"Transformer/encoderblock/MlpBlock_0/.*"),
      log=logs.append)
  got, before = _flat(params), _flat(init)
  kept = ["cls"] + [k for k in got if "/MlpBlock_0/" in k]
  assert len(kept) == 5 and sorted(report["dont_load"]) == sorted(kept)
  for k in got:
    if k in kept:
      np.testing.assert_array_equal(got[k], before[k])
    else:
      assert not np.allclose(got[k], before[k]), k
  assert "pos_embedding" in report["loaded"]
  assert any("dont_load" in line and "cls" in line for line in logs)


def test_missing_params_kept_at_init_and_reported(tmp_path):
  init = _init_params(False)
  ck = timm_ckpt(qkv_bias=False)
  params, report = pretrained.load_vit_params(
      init, _save(tmp_path, ck, "npz"), variant=VARIANT)
  missing = sorted(k for k in _flat(init)
                   if re.search(r"/(query|key|value)/bias$", k))
  assert len(missing) == 3 * DEPTH
  assert sorted(report["not_in_checkpoint"]) == missing
  for k in missing:
    np.testing.assert_array_equal(_flat(params)[k], _flat(init)[k])


def test_mismatch_names_parameter_and_shapes(tmp_path):
  ck = timm_ckpt()
  ck["blocks.0.attn.qkv.weight"] = np.zeros((3 * 48, D), np.float32)
  path = _save(tmp_path, ck, "safetensors")
  want = re.escape(
      "pretrained 'blocks.0.attn.qkv.weight' -> "
      f"'Transformer/encoderblock/{MHA}/query/kernel': checkpoint shape "
      f"(64, 2, 24) [stored as (144, 64)] vs model shape (64, 2, 32)")
  with pytest.raises(ValueError, match=want):
    pretrained.load_vit_params(_init_params(True), path, variant=VARIANT)


def test_wider_checkpoint_fails_on_first_param(tmp_path):
  path = _save(tmp_path, timm_ckpt(width=32), "npz")
  with pytest.raises(ValueError, match=r"pretrained '\S+' -> '\S+': checkpoint "
                     r"shape \(.*32.*\) vs model shape \(.*64.*\)"):
    pretrained.load_vit_params(_init_params(False), path, variant=VARIANT)


def test_depth_mismatch(tmp_path):
  path = _save(tmp_path, timm_ckpt(depth=3), "npz")
  with pytest.raises(ValueError, match="3 blocks.*has 2"):
    pretrained.load_vit_params(_init_params(True), path, variant=VARIANT)


def test_missing_and_unreadable_files(tmp_path):
  missing = str(tmp_path / "nope.npz")
  with pytest.raises(FileNotFoundError, match=re.escape(missing)):
    pretrained.load_vit_params(_init_params(True), missing, variant=VARIANT)
  for name in ("junk.npz", "junk.safetensors"):
    bad = tmp_path / name
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=re.escape(str(bad))):
      pretrained.load_vit_params(_init_params(True), str(bad), variant=VARIANT)
  other = _save(tmp_path, {"foo": np.zeros(3, np.float32)}, "npz")
  with pytest.raises(ValueError, match="unrecognised.*" + re.escape(other)):
    pretrained.load_vit_params(_init_params(True), other, variant=VARIANT)


def test_matches_timm_forward(tmp_path):
  """Against timm's own ViT, when timm and torch are installed."""
  torch = pytest.importorskip("torch")
  timm_vit = pytest.importorskip("timm.models.vision_transformer")
  torch.manual_seed(0)
  ref = timm_vit.VisionTransformer(
      img_size=IMG, patch_size=P, embed_dim=D, depth=DEPTH, num_heads=HEADS,
      mlp_ratio=MLP / D, num_classes=0).eval()
  with torch.no_grad():  # Non-trivial LayerNorm/bias values.
    for p in ref.parameters():
      p.add_(0.05 * torch.randn_like(p))
  ck = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
  params, _ = pretrained.load_vit_params(
      _init_params(True), _save(tmp_path, ck, "safetensors"), variant=VARIANT)
  x = _images()
  with torch.no_grad():
    tokens = ref.forward_features(
        torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
  cls, patches = _forward(params, x, True)
  np.testing.assert_allclose(cls, tokens[:, 0], atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(
      patches, tokens[:, 1:].reshape(patches.shape), atol=1e-4, rtol=1e-4)


def test_big_vision_train_checkpoint_prefix(tmp_path):
  """`params/...` beside `opt/...` (a big_vision train state) loads params."""
  ck = bv_ckpt()
  wrapped = {f"params/{k}": v for k, v in ck.items()}
  wrapped["opt/mu/cls"] = np.ones((1, 1, D), np.float32)
  init = _init_params(True)
  a, _ = pretrained.load_vit_params(init, _save(tmp_path, ck, "npz"),
                                    variant=VARIANT)
  wrapped_path = str(tmp_path / "wrapped.npz")
  np.savez(wrapped_path, **wrapped)
  b, report = pretrained.load_vit_params(init, wrapped_path, variant=VARIANT)
  assert report["format"] == "big_vision"
  jax.tree.map(np.testing.assert_array_equal, nn.unbox(a), nn.unbox(b))


def test_flax_optim_train_checkpoint_prefix(tmp_path):
  """`opt/target/...` beside `opt/state/...` (flax.optim, older AugReg/big_vision train
  states; big_vision's and timm's loaders read them) loads the target."""
  ck = augreg_ckpt()
  wrapped = {f"opt/target/{k}": v for k, v in ck.items()}
  wrapped["opt/state/step"] = np.int64(7)
  wrapped["opt/state/param_states/cls/grad_ema"] = np.ones((1, 1, D), np.float32)
  init = _init_params(True)
  a, _ = pretrained.load_vit_params(init, _save(tmp_path, ck, "npz"), variant=VARIANT)
  wrapped_path = str(tmp_path / "wrapped.npz")
  np.savez(wrapped_path, **wrapped)
  b, report = pretrained.load_vit_params(init, wrapped_path, variant=VARIANT)
  assert report["format"] == "big_vision"
  jax.tree.map(np.testing.assert_array_equal, nn.unbox(a), nn.unbox(b))


@pytest.mark.parametrize("ext", ["safetensors", "npz"])
@pytest.mark.parametrize("dtype", [ml_dtypes.bfloat16, np.float16])
def test_half_precision_checkpoint_resampled(tmp_path, dtype, ext):
  """bf16/fp16 files whose grid differs: resampled in float32 (scipy's zoom takes
  neither dtype), as the float32 copy of the same checkpoint is. np.savez stores
  bfloat16 as 2-byte void (the npz read failed: 'setting an array element with a
  sequence')."""
  half = {k: v.astype(dtype) for k, v in timm_ckpt(grid=8).items()}
  as_f32 = {k: v.astype(np.float32) for k, v in half.items()}
  init = _init_params(True)
  a, _ = pretrained.load_vit_params(init, _save(tmp_path, as_f32, "npz"), variant=VARIANT)
  b, report = pretrained.load_vit_params(init, _save(tmp_path, half, ext), variant=VARIANT)
  assert "8x8 -> 4x4" in report["posemb"]
  jax.tree.map(np.testing.assert_array_equal, nn.unbox(a), nn.unbox(b))


@pytest.mark.parametrize("make, ext, extra", [
    (timm_ckpt, "safetensors", "blocks.0.ls1.gamma"),       # DeiT-III LayerScale
    (timm_ckpt, "safetensors", "blocks.1.attn.q_norm.weight"),  # QK-norm
    (timm_ckpt, "npz", "reg_token"),                        # register tokens
    (timm_ckpt, "npz", "dist_token"),                       # DeiT's distillation token
    (bv_ckpt, "npz", "Transformer/encoderblock/LayerScale_0/scale"),
])
def test_encoder_parts_this_vit_lacks_are_errors(tmp_path, make, ext, extra):
  """Skipping them would load another network than the checkpoint's, silently."""
  ck = make()
  ck[extra] = np.ones((D,), np.float32)
  with pytest.raises(ValueError, match=re.escape(repr(extra)) + ".*no such parameter"):
    pretrained.load_vit_params(_init_params(True), _save(tmp_path, ck, ext), variant=VARIANT)


@pytest.mark.parametrize("pattern,scan", [
    ("backbone/pos_embedding", True),           # the optimizer groups' naming
    (r"Transformer/encoderblock_0/.*", True),   # unrolled naming, scanned model
    (r"Transformer/encoderblock/.*", False),    # scanned naming, unrolled model
])
def test_dont_load_pattern_matching_nothing_is_an_error(tmp_path, pattern, scan):
  # It used to load everything silently, the parameter meant to stay at init included.
  path = _save(tmp_path, timm_ckpt(), "npz")
  with pytest.raises(ValueError, match=r"dont_load pattern.*" + re.escape(pattern)
                     + r".*match no parameter.*without 'backbone/'"):
    pretrained.load_vit_params(_init_params(scan), path, variant=VARIANT,
                               dont_load=(pattern,))


def _no_cls_timm():
  ck = timm_ckpt()  # timm class_token=False: no cls_token, pos_embed without its slot
  del ck["cls_token"]
  ck["pos_embed"] = ck["pos_embed"][:, 1:]
  return ck


def _no_cls_big_vision():
  ck = bv_ckpt()  # big_vision's default pool_type='gap' has no cls
  del ck["cls"]
  return ck


def _fc_norm_timm():
  ck = timm_ckpt()  # timm fc_norm: the final norm after pooling, `norm` an Identity
  ck["fc_norm.weight"], ck["fc_norm.bias"] = ck.pop("norm.weight"), ck.pop("norm.bias")
  return ck


@pytest.mark.parametrize("make, ext, lacking", [
    (_no_cls_timm, "safetensors", ["cls"]),
    (_no_cls_big_vision, "npz", ["cls"]),
    (_fc_norm_timm, "safetensors", ["Transformer/encoder_norm/bias",
                                    "Transformer/encoder_norm/scale"]),
])
def test_model_parameter_the_checkpoint_lacks_is_an_error(tmp_path, make, ext, lacking):
  """They used to stay at init with an INFO line: a fresh token (or norm) inside the
  checkpoint's network, which is another function than the checkpoint's."""
  path = _save(tmp_path, make(), ext)
  with pytest.raises(ValueError, match=re.escape(path) + r".*no value for .*"
                     + re.escape(repr(lacking)) + ".*dont_load"):
    pretrained.load_vit_params(_init_params(True), path, variant=VARIANT)
  init = _init_params(True)
  escaped = tuple(re.escape(k) for k in lacking)
  params, report = pretrained.load_vit_params(init, path, variant=VARIANT,
                                              dont_load=escaped)
  assert sorted(report["dont_load"]) == lacking and report["not_in_checkpoint"] == []
  for k in lacking:
    np.testing.assert_array_equal(_flat(params)[k], _flat(init)[k])


@pytest.mark.parametrize("edit", ["other_variant", "extra_token_param", "oblong_grid"])
def test_errors_name_the_file(tmp_path, edit):
  """A shape mismatch (e.g. an S/16 file into a B/16 model), an encoder part this ViT
  lacks, a position grid that is not square: each one line naming the file."""
  ck = timm_ckpt(width=32) if edit == "other_variant" else timm_ckpt()
  if edit == "extra_token_param":
    ck["blocks.0.ls1.gamma"] = np.ones((D,), np.float32)
  if edit == "oblong_grid":
    ck["pos_embed"] = np.zeros((1, 1 + 4 * 8, D), np.float32)
  path = _save(tmp_path, ck, "npz")
  with pytest.raises(ValueError, match=re.escape(repr(path))) as e:
    pretrained.load_vit_params(_init_params(True), path, variant=VARIANT)
  assert "\n" not in str(e.value)
