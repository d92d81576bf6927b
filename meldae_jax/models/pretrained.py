"""Pretrained ViT init from the checkpoints people have on disk (SPEC §1.1).

Formats, detected from the parameter names inside the file:
  * big_vision (current: top-level `pos_embedding` without a cls slot, blocks
    `Transformer/encoderblock/...` stacked or `encoderblock_{i}`) and the older
    vit_jax / AugReg names (`Transformer/posembed_input/pos_embedding`,
    `MultiHeadDotProductAttention_1`, `LayerNorm_2`, `MlpBlock_3`), `.npz`;
  * timm `state_dict` names (`blocks.{i}.attn.qkv.weight`, ...) and HF
    `ViTModel` names (`encoder.layer.{i}...`, `vit.` prefix optional), from
    `.safetensors` or an `.npz` of the same names.

Every checkpoint is first converted to *canonical* names: ours with the blocks
unrolled (`Transformer/encoderblock_{i}/...`) and our layouts (HWIO conv,
(in, out) Dense, (D, heads, head_dim) q/k/v, (heads, head_dim, D) out); those
are then written into the model's params, scan-stacked or not.

A position table of another grid is resampled bilinearly (`scipy.ndimage.zoom`,
order 1, as big_vision's `resample_posemb`; timm's own loader uses bicubic), its
cls slot kept. The model feeds the ViT images in [-1, 1], the AugReg / big_vision /
timm `augreg` / HF `google/vit-*` convention: a checkpoint trained on ImageNet
mean/std inputs (DeiT, MAE, DINO) loads, but sees differently scaled pixels.
"""
import logging
import math
import os
import re
from typing import Any, Callable, Iterator

from flax import traverse_util
from flax.core import meta
import ml_dtypes
import numpy as np
import safetensors.numpy
import scipy.ndimage

from meldae_jax.models import vit

_MHA = "MultiHeadDotProductAttention_0"
_BLOCK_PARAMS = frozenset(
    [f"LayerNorm_{i}/{p}" for i in (0, 1) for p in ("scale", "bias")]
    + [f"{_MHA}/{m}/{p}" for m in ("query", "key", "value", "out")
       for p in ("kernel", "bias")]
    + [f"MlpBlock_0/Dense_{i}/{p}" for i in (0, 1) for p in ("kernel", "bias")])
_LN = {"weight": "scale", "bias": "bias"}

# (checkpoint name, canonical name, array in our layout, array as stored).
Entry = tuple[str, str, np.ndarray, tuple[int, ...]]


def _block(i, sub):
  return f"Transformer/encoderblock_{int(i)}/{sub}"


def _read(path: str) -> dict[str, np.ndarray]:
  """Reads a flat name -> array dict from .npz or .safetensors."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"pretrained checkpoint not found: {path!r}")
  try:
    if path.endswith(".safetensors"):  # bfloat16 comes back as ml_dtypes.
      return dict(safetensors.numpy.load_file(path))
    with np.load(path, allow_pickle=False) as z:
      return {k: _bfloat16_from_void(z[k]) for k in z.files}
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(
        f"cannot read pretrained checkpoint {path!r}: "
        f"{type(e).__name__}: {e}") from e


def _bfloat16_from_void(a: np.ndarray) -> np.ndarray:
  """np.savez writes bfloat16 (JAX params) as 2-byte void; big_vision reads it back so."""
  return a.view(ml_dtypes.bfloat16) if a.dtype == np.dtype("V2") else a


def _strip_prefix(ckpt, prefixes):
  """Drops a prefix that every name shares (`module.`, ...).

  A big_vision train checkpoint (`params/...` beside `opt/...`), or an older one
  of flax.optim (`opt/target/...` beside `opt/state/...`, as big_vision's and
  timm's loaders read), keeps its params only.
  """
  if any(k.startswith("params/") for k in ckpt):
    ckpt = {k[7:]: v for k, v in ckpt.items() if k.startswith("params/")}
  elif any(k.startswith("opt/target/") for k in ckpt):  # flax.optim's train checkpoints
    ckpt = {k[11:]: v for k, v in ckpt.items() if k.startswith("opt/target/")}
  for prefix in prefixes:
    if ckpt and all(k.startswith(prefix) for k in ckpt):
      ckpt = {k[len(prefix):]: v for k, v in ckpt.items()}
  return ckpt


def _detect(ckpt, path):
  names = list(ckpt)
  if any(k.removeprefix("vit.").startswith(("embeddings.", "encoder.layer."))
         for k in names):
    return "hf"
  if any(k in ("cls_token", "pos_embed") or k.startswith(("blocks.",
                                                          "patch_embed."))
         for k in names):
    return "timm"
  if any("/" in k or k in ("cls", "pos_embedding") for k in names):
    return "big_vision"
  raise ValueError(
      f"unrecognised checkpoint format in {path!r} (neither big_vision/vit_jax,"
      f" timm nor HF ViT names); first names: {names[:5]}")


def _linear(w, *, heads, split="out"):
  """torch Linear (out, in) -> (in, out), optionally split into heads."""
  k = w.T
  if heads and split == "out" and k.shape[1] % heads == 0:
    k = k.reshape(k.shape[0], heads, -1)
  if heads and split == "in" and k.shape[0] % heads == 0:
    k = k.reshape(heads, -1, k.shape[1])
  return k


def _heads(v, heads):
  return v.reshape(heads, -1) if v.shape[0] % heads == 0 else v


def _torch_block(i, sub, kind, arr, heads) -> Iterator[tuple[str, np.ndarray]]:
  """One timm/HF block tensor, normalised to (sub, weight|bias), to ours."""
  if sub in ("ln0", "ln1"):
    yield _block(i, f"LayerNorm_{sub[-1]}/{_LN[kind]}"), arr
  elif sub in ("query", "key", "value"):
    v = _linear(arr, heads=heads) if kind == "weight" else _heads(arr, heads)
    leaf = "kernel" if kind == "weight" else "bias"
    yield _block(i, f"{_MHA}/{sub}/{leaf}"), v
  elif sub == "qkv":
    for m, part in zip(("query", "key", "value"), np.split(arr, 3, axis=0)):
      yield from _torch_block(i, m, kind, part, heads)
  elif sub == "out":
    v = _linear(arr, heads=heads, split="in") if kind == "weight" else arr
    yield _block(i, f"{_MHA}/out/{'kernel' if kind == 'weight' else 'bias'}"), v
  elif sub in ("fc1", "fc2"):
    v = arr.T if kind == "weight" else arr
    yield (_block(i, f"MlpBlock_0/Dense_{int(sub[-1]) - 1}/"
                     f"{'kernel' if kind == 'weight' else 'bias'}"), v)


_TIMM_BLOCK = {"norm1": "ln0", "attn.qkv": "qkv", "attn.proj": "out",
               "norm2": "ln1", "mlp.fc1": "fc1", "mlp.fc2": "fc2"}
_HF_BLOCK = {"layernorm_before": "ln0", "attention.attention.query": "query",
             "attention.attention.key": "key",
             "attention.attention.value": "value",
             "attention.output.dense": "out", "layernorm_after": "ln1",
             "intermediate.dense": "fc1", "output.dense": "fc2"}


def _convert_torch(ckpt, fmt, heads, skipped, path) -> list[Entry]:
  """timm / HF state_dict names and layouts -> canonical entries."""
  if fmt == "timm":
    block_re = re.compile(r"blocks\.(\d+)\.(.+)\.(weight|bias)")
    table, top = _TIMM_BLOCK, {
        "cls_token": "cls", "pos_embed": "pos_embedding",
        "patch_embed.proj.weight": "embedding/kernel",
        "patch_embed.proj.bias": "embedding/bias",
        "norm.weight": "Transformer/encoder_norm/scale",
        "norm.bias": "Transformer/encoder_norm/bias"}
  else:
    block_re = re.compile(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias)")
    table, top = _HF_BLOCK, {
        "embeddings.cls_token": "cls",
        "embeddings.position_embeddings": "pos_embedding",
        "embeddings.patch_embeddings.projection.weight": "embedding/kernel",
        "embeddings.patch_embeddings.projection.bias": "embedding/bias",
        "layernorm.weight": "Transformer/encoder_norm/scale",
        "layernorm.bias": "Transformer/encoder_norm/bias"}
  entries = []
  for name, arr in ckpt.items():
    # HF ViTForImageClassification: `vit.` on the encoder, not `classifier.`.
    key = name.removeprefix("vit.") if fmt == "hf" else name
    m = block_re.fullmatch(key)
    if key in top:
      v = arr.transpose(2, 3, 1, 0) if top[key] == "embedding/kernel" else arr
      entries.append((name, top[key], v, arr.shape))  # OIHW -> HWIO above.
    elif m and m.group(2) in table:
      for canon, v in _torch_block(m.group(1), table[m.group(2)], m.group(3),
                                   arr, heads):
        entries.append((name, canon, v, arr.shape))
    elif key.startswith(_torch_encoder_parts(fmt)):
      _not_this_vit(name, path)
    else:
      skipped[name] = "not part of the ViT encoder (head/pooler/unsupported)"
  return entries


def _torch_encoder_parts(fmt: str) -> tuple[str, ...]:
  """Name prefixes of encoder parts: one not converted is one this ViT lacks."""
  if fmt == "timm":
    return ("blocks.", "reg_token", "dist_token", "norm_pre.")  # dist: DeiT distilled
  return ("encoder.layer.", "embeddings.")


def _not_this_vit(name: str, path: str):
  raise ValueError(
      f"pretrained {path!r}: {name!r} is part of the checkpoint's encoder and this ViT "
      "has no such parameter (LayerScale, QK-norm, register tokens, a pre-norm, ...): "
      "loading the rest would give another network than the checkpoint's")


_OLD_BLOCK_NAMES = (("MultiHeadDotProductAttention_1/", f"{_MHA}/"),
                    ("LayerNorm_2/", "LayerNorm_1/"),
                    ("MlpBlock_3/", "MlpBlock_0/"))
_BV_POSEMB = ("pos_embedding", "Transformer/pos_embedding",
              "Transformer/posembed_input/pos_embedding")


def _convert_big_vision(ckpt, skipped, path) -> list[Entry]:
  """big_vision / vit_jax names (already our layouts) -> canonical entries."""
  entries = []
  for name, arr in ckpt.items():
    m = re.fullmatch(r"Transformer/encoderblock(?:_(\d+))?/(.+)", name)
    if name in ("embedding/kernel", "embedding/bias", "cls",
                "Transformer/encoder_norm/scale",
                "Transformer/encoder_norm/bias"):
      entries.append((name, name, arr, arr.shape))
    elif name in _BV_POSEMB:
      entries.append((name, "pos_embedding", arr, arr.shape))
    elif m:
      sub = m.group(2)
      for old, new in _OLD_BLOCK_NAMES:
        sub = sub.replace(old, new)
      if sub not in _BLOCK_PARAMS:
        _not_this_vit(name, path)
      elif m.group(1) is not None:
        entries.append((name, _block(m.group(1), sub), arr, arr.shape))
      else:  # Scan-stacked: one entry per layer.
        for i in range(arr.shape[0]):
          entries.append((f"{name}[{i}]", _block(i, sub), arr[i], arr.shape))
    else:
      skipped[name] = "not part of the ViT encoder (head/pre_logits/...)"
  return entries


def _grid(n, what):
  g = math.isqrt(n)
  if g * g != n:
    raise ValueError(f"{what}: {n} positions is not a square grid")
  return g


def _fit_posemb(pe, model_shape, log, path):
  """Adds a zero cls slot if missing; resamples the grid to the model's."""
  pe = np.asarray(pe)
  if pe.dtype not in (np.float32, np.float64):  # bf16/fp16 checkpoints: scipy's zoom
    pe = pe.astype(np.float32)                  # takes neither (cast to the model's later)
  n = pe.shape[1]
  if math.isqrt(n) ** 2 == n:  # big_vision: no cls slot (cls gets no posemb).
    cls_pe, grid = np.zeros_like(pe[:, :1]), pe
    log("pretrained: pos_embedding has no cls slot; using zeros for it")
  else:
    cls_pe, grid = pe[:, :1], pe[:, 1:]
  note = None
  if grid.shape[1] != model_shape[1] - 1 and grid.shape[2] == model_shape[2]:
    g_old = _grid(grid.shape[1], f"pretrained {path!r}: its pos_embedding")
    g_new = _grid(model_shape[1] - 1, "the model's pos_embedding")
    grid = grid.reshape(g_old, g_old, -1)
    zoom = (g_new / g_old, g_new / g_old, 1)
    grid = scipy.ndimage.zoom(grid, zoom, order=1).reshape(1, g_new * g_new, -1)
    note = f"resampled pos_embedding grid {g_old}x{g_old} -> {g_new}x{g_new}"
    log(f"pretrained: {note} (bilinear, cls slot kept)")
  return np.concatenate([cls_pe, grid], axis=1), note


def load_vit_params(init_params, path: str, *, variant: str,
                    dont_load=(), log: Callable[[str], Any] = logging.info):
  """Loads a pretrained ViT checkpoint into `init_params` (the ViT subtree).

  Args:
    init_params: the ViT's params (scan-stacked or not, boxed or not).
    path: `.npz` or `.safetensors` file (big_vision / vit_jax / timm / HF).
    variant: the model's variant (e.g. 'B/16'), for the number of heads.
    dont_load: regexes (`re.fullmatch`) over our '/'-joined param paths whose
      values stay at init (for scanned blocks: the whole stacked param); one that
      matches no parameter is an error.
    log: called with one string per message.

  Returns:
    `(params, report)`: params with the same structure (and partitioning
    boxes) as `init_params`, loaded leaves as host numpy arrays; `report` a
    dict with `format`, `loaded`, `dont_load`, `not_in_checkpoint` (our paths
    kept at init), `skipped` (checkpoint name -> why) and `posemb`.

  Raises:
    FileNotFoundError / ValueError: missing or unreadable file (naming it),
      unknown format, a shape mismatch (naming both parameters and shapes), or a
      model parameter the file lacks and `dont_load` does not name (the bias of
      a layer stored without one excepted: it stays at its init, zero).
  """
  heads = vit.vit_dims(variant)["num_heads"]
  ckpt = _strip_prefix(_read(path), ("module.", "model."))
  fmt = _detect(ckpt, path)
  skipped = {}
  if fmt == "big_vision":
    entries = _convert_big_vision(ckpt, skipped, path)
  else:
    entries = _convert_torch(ckpt, fmt, heads, skipped, path)

  flat = traverse_util.flatten_dict(meta.unbox(init_params), sep="/")
  boxed = traverse_util.flatten_dict(init_params, sep="/")
  unmatched = [p for p in dont_load if not any(re.fullmatch(p, k) for k in flat)]
  if unmatched:  # a typo would load what was meant to stay at init, silently
    raise ValueError(
        f"pretrained: dont_load pattern(s) {unmatched} match no parameter of the "
        "backbone; they are matched (re.fullmatch) against the backbone's own paths, "
        f"without 'backbone/', e.g. {sorted(flat)[:3]}")
  scanned = any(k.startswith("Transformer/encoderblock/") for k in flat)
  depth = (flat[f"Transformer/encoderblock/{_MHA}/query/kernel"].shape[0]
           if scanned else
           len({k.split("/")[1] for k in flat
                if k.startswith("Transformer/encoderblock_")}))
  ckpt_depth = 1 + max([int(re.match(r"Transformer/encoderblock_(\d+)/", c)[1])
                        for _, c, _, _ in entries
                        if c.startswith("Transformer/encoderblock_")],
                       default=-1)
  if ckpt_depth and ckpt_depth != depth:
    raise ValueError(f"pretrained {path!r} has {ckpt_depth} blocks, "
                     f"the {variant} model has {depth}")

  new = {}  # our path -> host array being filled in
  done = {}  # our path -> number of slices written (stacked) or 1
  report = dict(path=path, format=fmt, loaded=[], dont_load=[],
                not_in_checkpoint=[], skipped=skipped, posemb=None)
  for src, canon, arr, stored in entries:
    layer = None
    ours = canon
    if scanned and canon.startswith("Transformer/encoderblock_"):
      layer = int(canon.split("/")[1].rsplit("_", 1)[1])
      ours = "Transformer/encoderblock/" + canon.split("/", 2)[2]
    if ours not in flat:
      skipped[src] = f"no model parameter {ours!r}"
      continue
    if any(re.fullmatch(p, ours) for p in dont_load):
      if ours not in report["dont_load"]:
        report["dont_load"].append(ours)
      continue
    want = flat[ours].shape[1:] if layer is not None else flat[ours].shape
    if ours == "pos_embedding":
      arr, report["posemb"] = _fit_posemb(arr, want, log, path)
    if tuple(arr.shape) != tuple(want):
      how = ("" if tuple(stored) == tuple(arr.shape)
             else f" [stored as {tuple(stored)}]")
      raise ValueError(
          f"pretrained {src!r} -> {ours!r}: checkpoint shape "
          f"{tuple(arr.shape)}{how} vs model shape {tuple(want)}, in {path!r}")
    dtype = flat[ours].dtype
    if layer is None:
      new[ours] = np.asarray(arr, dtype)
    else:
      if ours not in new:
        new[ours] = np.array(flat[ours], dtype)
      new[ours][layer] = arr
    done[ours] = done.get(ours, 0) + 1

  out = {}
  for k, leaf in boxed.items():
    if k in new:
      out[k] = (leaf.replace_boxed(new[k])
                if isinstance(leaf, meta.AxisMetadata) else new[k])
      full = done[k] >= (depth if k.startswith("Transformer/encoderblock/")
                         else 1)
      report["loaded" if full else "not_in_checkpoint"].append(k)
    else:
      out[k] = leaf
      if any(re.fullmatch(p, k) for p in dont_load):
        if k not in report["dont_load"]:  # asked to stay at init, in the file or not
          report["dont_load"].append(k)
      else:
        report["not_in_checkpoint"].append(k)

  if not report["loaded"]:
    raise ValueError(f"pretrained {path!r} ({fmt} names): no parameter matched"
                     f" the model; checkpoint names: {list(ckpt)[:5]}...")
  # A layer stored without its bias (timm qkv_bias=False, ...) computes with zero, which
  # is its init here; any other parameter the file lacks (a cls token, the final norm, a
  # block) would train from init inside what looks like the checkpoint's network.
  lacking = [k for k in report["not_in_checkpoint"]
             if not (k.endswith("/bias") and any(
                 k[:-4] + w in report["loaded"] for w in ("kernel", "scale")))]
  if lacking:
    raise ValueError(
        f"pretrained {path!r} ({fmt} names) has no value for {len(lacking)} model "
        f"parameter(s) {lacking[:4]}{'...' if len(lacking) > 4 else ''} (e.g. a "
        "checkpoint without a cls token, or with its final norm after pooling): add "
        "them to dont_load to train them from init")
  log(f"pretrained: {fmt} checkpoint {path}: loaded {len(report['loaded'])}"
      f" of {len(flat)} params")
  for k in report["dont_load"]:
    log(f"pretrained: kept init (dont_load): {k}")
  for k in report["not_in_checkpoint"]:
    log(f"pretrained: kept init (not in checkpoint): {k}")
  for k, why in skipped.items():
    log(f"pretrained: skipped checkpoint param {k}: {why}")
  return traverse_util.unflatten_dict(out, sep="/"), report
