"""PyTorch port of MELDAE and its train step: a same-machine baseline for step.py.

  /tmp/torchvenv/bin/python benchmarks/torch_port.py --config Ti112 --mode train
      [--backend eager|compile] [--dtype fp32|bf16] [--steps 10] [--warmup 2]
      [--batch B] [--device cpu|cuda]
  /tmp/torchvenv/bin/python benchmarks/torch_port.py --check /tmp/ti112/meldae_Ti112.npz

Runs under its own interpreter with torch (no JAX). The modules mirror
`meldae_jax/models/` op for op, so both sides do the same arithmetic:
  * input: uint8 / 127.5 - 1;
  * ViT (vit.py): patch conv, [cls; patches] + pos_embedding, pre-LN blocks with
    LayerNorm eps 1e-6, attention scaling the query by 1/sqrt(dh) before q.k (flax's
    `dot_product_attention`), MLP with the exact (erf) GELU, final encoder_norm;
  * Bi-LSTM (temporal.py): two LSTMs (gates i, f, g, o; zero initial state) over all T
    steps; the backward one reads flax's `flip_sequences` order (valid prefix reversed,
    padding after it), then a Dense;
  * region pooling (region_pool.py) as the same (G, h) averaging matrices, + temporal and
    region embeddings;
  * enhancer (enhancer.py): LayerNorms with flax's default eps 1e-6, cross-attention with
    the logits divided by sqrt(dh) after q.k, masked by finfo.min, softmax in fp32;
    MLP with the tanh GELU (flax's `nn.gelu` default); encoder_norm;
  * per-frame fusion (fusion.py) and heads (heads.py, tanh GELU, fp32 logits);
  * the total loss (losses.py) with the loss config step.py uses (exported in the .npz).
A train step is forward + loss + backward + clip_grad_norm_ + AdamW (+ zero_grad), with
the parameter groups of the project's optimiser config (backbone vs the rest, weight
decay on every weight matrix: Flax `kernel`s and the enhancer's `out_kernel`). The learning-rate schedule is left out (a scalar per step).

`--check NPZ` loads the parameters exported by `step.py --export`, runs the exported batch
and compares outputs, loss terms and gradients with JAX's; exit status 1 when any is off
by more than `--rtol` (1e-4) relative to the largest value of its kind (fp32 agrees to
~2e-6; a tanh instead of erf GELU in the ViT is 3.5e-4 off at Ti112).
"""
import argparse
import contextlib
import json
import math
import os
import pathlib
import re
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))
from benchmarks import common  # pylint: disable=g-import-not-at-top,wrong-import-position

LN_EPS = 1e-6  # vit.LN_EPS and flax's nn.LayerNorm default alike

# The project's defaults (losses.default_loss_config, configs/common.py optimiser); an
# exported .npz carries the ones step.py used and they take precedence.
LOSS_CONFIG = dict(me_weight=0.5, state_weight=0.2, loc_weight=1.0, loc_loss="bal",
                   boundary_lambda=1.0, boundary_weight=10.0, focal_alpha=0.25,
                   focal_gamma=2.0, tversky_alpha=0.7, tversky_beta=0.3,
                   tversky_gamma=0.75)
OPT_CONFIG = dict(groups=[["backbone/.*", 1e-5], [".*", 5e-4]], weight_decay=1e-4,
                  weight_decay_regex=".*kernel", b1=0.9, b2=0.999, eps=1e-8,
                  clip_norm=1.0)


def vit_dims(variant: str) -> dict:
  name, _, patch = variant.partition("/")
  return dict(common.VIT_VARIANTS[name], patch=int(patch))


def layer_norm(d: int) -> nn.LayerNorm:
  return nn.LayerNorm(d, eps=LN_EPS)


# ---------------------------------------------------------------------------------------
# ViT (vit.py).
# ---------------------------------------------------------------------------------------


class SelfAttention(nn.Module):
  """flax MultiHeadDotProductAttention: q, k, v, out projections with biases."""

  def __init__(self, d: int, heads: int):
    super().__init__()
    self.heads, self.dh = heads, d // heads
    self.query = nn.Linear(d, heads * self.dh)
    self.key = nn.Linear(d, heads * self.dh)
    self.value = nn.Linear(d, heads * self.dh)
    self.out = nn.Linear(heads * self.dh, d)

  def forward(self, x):
    n, length, _ = x.shape
    split = lambda y: y.view(n, length, self.heads, self.dh).transpose(1, 2)  # noqa: E731
    q = split(self.query(x)) / math.sqrt(self.dh)  # flax scales the query first
    k, v = split(self.key(x)), split(self.value(x))
    probs = torch.softmax(q @ k.transpose(-2, -1), dim=-1)
    ctx = (probs @ v).transpose(1, 2).reshape(n, length, self.heads * self.dh)
    return self.out(ctx)


class Block(nn.Module):
  """Encoder1DBlock: x + MHSA(LN(x)), then x + MLP(LN(x)), exact GELU."""

  def __init__(self, d: int, mlp_dim: int, heads: int):
    super().__init__()
    self.norm0 = layer_norm(d)
    self.attn = SelfAttention(d, heads)
    self.norm1 = layer_norm(d)
    self.fc0 = nn.Linear(d, mlp_dim)
    self.fc1 = nn.Linear(mlp_dim, d)

  def forward(self, x):
    x = x + self.attn(self.norm0(x))
    return x + self.fc1(F.gelu(self.fc0(self.norm1(x))))


class ViT(nn.Module):
  """(N, H, W, 3) in [-1, 1] -> (cls (N, D), patches (N, h, w, D))."""

  def __init__(self, variant: str, image_size: int):
    super().__init__()
    dims = vit_dims(variant)
    d, p = dims["width"], dims["patch"]
    side = image_size // p
    self.embedding = nn.Conv2d(3, d, p, stride=p)
    self.cls = nn.Parameter(torch.zeros(1, 1, d))
    self.pos_embedding = nn.Parameter(torch.randn(1, 1 + side * side, d) / math.sqrt(d))
    self.blocks = nn.ModuleList(Block(d, dims["mlp_dim"], dims["num_heads"])
                                for _ in range(dims["depth"]))
    self.encoder_norm = layer_norm(d)

  def forward(self, x):
    x = self.embedding(x.permute(0, 3, 1, 2))        # (N, D, h, w)
    n, d, h, w = x.shape
    x = x.flatten(2).transpose(1, 2)                  # (N, h*w, D), row-major as einops
    x = torch.cat([self.cls.expand(n, 1, d).to(x.dtype), x], 1)
    x = x + self.pos_embedding.to(x.dtype)
    for block in self.blocks:
      x = block(x)
    x = self.encoder_norm(x)
    return x[:, 0], x[:, 1:].reshape(n, h, w, d)


# ---------------------------------------------------------------------------------------
# Bi-LSTM (temporal.py), region pooling (region_pool.py).
# ---------------------------------------------------------------------------------------


def flip_index(lengths, t: int):
  """flax `flip_sequences` order: (T-1-j + L) mod T (its own inverse)."""
  j = torch.arange(t - 1, -1, -1, device=lengths.device)
  return (j[None, :] + lengths[:, None]) % t


class Temporal(nn.Module):
  """Bi-LSTM (D/2 per direction, fp32 carry as flax's zeros) + Dense to D."""

  def __init__(self, d: int):
    super().__init__()
    h = d // 2
    self.forward_lstm = nn.LSTM(d, h, batch_first=True)
    self.backward_lstm = nn.LSTM(d, h, batch_first=True)
    for lstm in (self.forward_lstm, self.backward_lstm):
      # flax's cell has one bias (on the h-projections): keep torch's input bias at 0.
      nn.init.zeros_(lstm.bias_ih_l0)
      lstm.bias_ih_l0.requires_grad_(False)
    self.proj = nn.Linear(2 * h, d)

  def forward(self, x, frame_mask):
    lengths = (frame_mask > 0).sum(-1)
    fwd, _ = self.forward_lstm(x)
    idx = flip_index(lengths, x.shape[1])[..., None]
    bwd, _ = self.backward_lstm(x.gather(1, idx.expand(-1, -1, x.shape[-1])))
    bwd = bwd.gather(1, idx.expand(-1, -1, bwd.shape[-1]))
    return self.proj(torch.cat([fwd, bwd.to(fwd.dtype)], -1))


def pool_matrix(n: int, g: int) -> np.ndarray:
  """region_pool.pool_matrix: row i averages [floor(i*n/g), ceil((i+1)*n/g))."""
  m = np.zeros((g, n), np.float32)
  for i in range(g):
    lo, hi = (i * n) // g, -((-(i + 1) * n) // g)
    m[i, lo:hi] = 1.0 / (hi - lo)
  return m


class RegionPool(nn.Module):
  """(B,T,h,w,D) -> (B, T*G*G, D): adaptive average pooling + embeddings."""

  def __init__(self, d: int, side: int, g: int, max_frames: int):
    super().__init__()
    self.g = g
    self.register_buffer("ph", torch.from_numpy(pool_matrix(side, g)), persistent=False)
    self.register_buffer("pw", torch.from_numpy(pool_matrix(side, g)), persistent=False)
    self.temporal_embedding = nn.Parameter(0.02 * torch.randn(max_frames, d))
    self.region_embedding = nn.Parameter(0.02 * torch.randn(g * g, d))

  def forward(self, patches):
    b, t, _, _, d = patches.shape
    x = torch.einsum("bthwd,ih->btiwd", patches, self.ph.to(patches.dtype))
    x = torch.einsum("btiwd,jw->btijd", x, self.pw.to(patches.dtype))
    x = x.reshape(b, t, self.g * self.g, d)
    emb = self.temporal_embedding[:t, None] + self.region_embedding[None]
    return (x + emb.to(x.dtype)).reshape(b, t * self.g * self.g, d)


# ---------------------------------------------------------------------------------------
# Enhancer (enhancer.py), per-frame fusion (fusion.py), heads (heads.py).
# ---------------------------------------------------------------------------------------


class CrossAttention(nn.Module):
  """enhancer.Attention: returns out and (probs fp32, v (B,M,H,dh), out_kernel)."""

  def __init__(self, d: int, heads: int):
    super().__init__()
    self.heads, self.dh = heads, max(1, d // heads)
    self.query = nn.Linear(d, heads * self.dh)
    self.key = nn.Linear(d, heads * self.dh)
    self.value = nn.Linear(d, heads * self.dh)
    self.out_kernel = nn.Parameter(torch.empty(heads, self.dh, d))
    nn.init.xavier_uniform_(self.out_kernel.view(heads * self.dh, d))
    self.out_bias = nn.Parameter(torch.zeros(d))

  def forward(self, x, kv, kv_mask):
    b, n, _ = x.shape
    m = kv.shape[1]
    q = self.query(x).view(b, n, self.heads, self.dh)
    k = self.key(kv).view(b, m, self.heads, self.dh)
    v = self.value(kv).view(b, m, self.heads, self.dh)
    logits = torch.einsum("bnhc,bmhc->bhnm", q, k) / math.sqrt(self.dh)
    logits = logits.float()
    keep = kv_mask[:, None, None, :] > 0
    logits = logits.masked_fill(~keep, torch.finfo(torch.float32).min)
    probs = torch.softmax(logits, dim=-1)
    ctx = torch.einsum("bhnm,bmhc->bnhc", probs.to(v.dtype), v)
    out = torch.einsum("bnhc,hcd->bnd", ctx, self.out_kernel.to(ctx.dtype))
    return out + self.out_bias.to(out.dtype), probs, v


class Mlp(nn.Module):
  """enhancer.Mlp: Dense -> tanh GELU -> Dense."""

  def __init__(self, d: int, mlp_dim: int):
    super().__init__()
    self.fc0 = nn.Linear(d, mlp_dim)
    self.fc1 = nn.Linear(mlp_dim, d)

  def forward(self, x):
    return self.fc1(F.gelu(self.fc0(x), approximate="tanh"))


class Enhancer(nn.Module):
  """One layer of N learnable queries cross-attending to the regions, + encoder_norm."""

  def __init__(self, d: int, queries: int, heads: int, layers: int = 1):
    super().__init__()
    self.queries = nn.Parameter(0.02 * torch.randn(queries, d))
    self.layers = nn.ModuleList(nn.ModuleDict(dict(
        norm_q=layer_norm(d), norm_kv=layer_norm(d),
        cross_attention=CrossAttention(d, heads), norm_mlp=layer_norm(d),
        mlp=Mlp(d, 4 * d))) for _ in range(layers))
    self.encoder_norm = layer_norm(d)

  def forward(self, regional, t: int, g: int, frame_mask):
    b, _, d = regional.shape
    x = self.queries.expand(b, -1, d).to(regional.dtype)
    kv_mask = frame_mask.repeat_interleave(g * g, dim=1)   # "b t -> b (t r)"
    aux = None
    for layer in self.layers:
      y, probs, v = layer["cross_attention"](layer["norm_q"](x), layer["norm_kv"](regional),
                                             kv_mask)
      aux = (probs, v, layer["cross_attention"].out_kernel)
      x = x + y
      x = x + layer["mlp"](layer["norm_mlp"](x))
    return self.encoder_norm(x), aux


def per_frame_readout(probs, v, out_kernel, t: int):
  """fusion.per_frame_readout: e (B,T,D)."""
  b, m, h, c = v.shape
  a = probs.sum(2)                                          # (B,H,M)
  ctx = a.transpose(1, 2)[..., None].to(v.dtype) * v        # (B,M,H,dh)
  ctx = ctx.view(b, t, m // t, h, c).sum(2)                 # (B,T,H,dh)
  return torch.einsum("bthc,hcd->btd", ctx, out_kernel.to(v.dtype))


class Head(nn.Module):
  """LayerNorm -> Dense -> tanh GELU -> Dense(out), fp32 logits."""

  def __init__(self, d_in: int, hidden: int, out: int):
    super().__init__()
    self.norm = layer_norm(d_in)
    self.hidden = nn.Linear(d_in, hidden)
    self.out = nn.Linear(hidden, out)

  def forward(self, x):
    x = F.gelu(self.hidden(self.norm(x)), approximate="tanh")
    return self.out(x).float()


def masked_mean(x, mask):
  """heads.masked_mean over axis 1, in fp32."""
  m = mask.float().reshape(mask.shape + (1,) * (x.dim() - mask.dim()))
  return (x.float() * m).sum(1) / m.sum(1).clamp_min(1.0)


class MELDAE(nn.Module):
  """meldae.MELDAE with fusion='per_frame', temporal='bilstm', enhancer on."""

  def __init__(self, shape: common.Shape, frames: int, num_classes: int = 1):
    super().__init__()
    d = vit_dims(shape.variant)["width"]
    side = shape.image_size // vit_dims(shape.variant)["patch"]
    self.g = shape.regions
    self.backbone = ViT(shape.variant, shape.image_size)
    self.temporal = Temporal(d)
    self.region_pool = RegionPool(d, side, shape.regions, frames)
    self.enhancer = Enhancer(d, shape.queries, shape.heads)
    self.locator = Head(2 * d, d, num_classes)
    self.state = Head(2 * d, d, 1)
    self.me_classifier = Head(2 * d, d, 1)

  def forward(self, video, frame_mask):
    b, t = video.shape[:2]
    x = video.float() / 127.5 - 1.0
    cls, patches = self.backbone(x.reshape((b * t,) + x.shape[2:]))
    d = cls.shape[-1]
    cls = cls.reshape(b, t, d)
    patches = patches.reshape((b, t) + patches.shape[1:])
    mask = frame_mask.float()
    f_global = self.temporal(cls, frame_mask)
    clip_feats = [masked_mean(f_global, mask)]
    regional = self.region_pool(patches)
    f_enh, (probs, v, out_kernel) = self.enhancer(regional, t, self.g, frame_mask)
    clip_feats.append(f_enh.float().mean(1))
    e = per_frame_readout(probs, v, out_kernel, t)
    frame_feats = torch.cat([f_global, e.to(f_global.dtype)], -1)
    clip = torch.cat(clip_feats, -1)
    return dict(loc_logits=self.locator(frame_feats),
                state_logits=self.state(frame_feats)[..., 0],
                me_logit=self.me_classifier(clip)[..., 0])


# ---------------------------------------------------------------------------------------
# Loss (losses.py: total_loss with loc_loss='bal').
# ---------------------------------------------------------------------------------------


def _bce(logits, labels):
  return -(labels * F.logsigmoid(logits) + (1.0 - labels) * F.logsigmoid(-logits))


def _masked_mean(x, mask):
  return torch.where(mask > 0, x, 0.0).sum() / mask.sum().clamp_min(1.0)


def _frame_mask(mask, like):
  mask = mask.float()
  return mask.reshape(mask.shape + (1,) * (like.dim() - mask.dim())).expand_as(like)


def _per_clip_mean(values, mask):
  return _masked_mean(values, (mask.sum(1) > 0).float())


def sigmoid_focal_loss(logits, labels, mask, alpha, gamma):
  logits, labels = logits.float(), labels.float()
  mask = _frame_mask(mask, logits)
  one_minus_pt = labels * torch.sigmoid(-logits) + (1 - labels) * torch.sigmoid(logits)
  alpha_t = alpha * labels + (1 - alpha) * (1 - labels)
  return _masked_mean(alpha_t * _bce(logits, labels) * one_minus_pt ** gamma, mask)


def focal_tversky_loss(logits, labels, mask, alpha, beta, gamma):
  mask = _frame_mask(mask, logits)
  s, not_s = torch.sigmoid(logits), torch.sigmoid(-logits)
  m = torch.where(mask > 0, 1.0, 0.0)
  tp = (s * labels * m).sum(1)
  fn = (not_s * labels * m).sum(1)
  fp = (s * (1 - labels) * m).sum(1)
  ti = (tp + 1.0) / (tp + alpha * fn + beta * fp + 1.0)
  return _per_clip_mean((1.0 - ti).clamp_min(1e-6) ** gamma, mask)


def boundary_bce(logits, labels, boundary, mask, boundary_weight):
  mask = _frame_mask(mask, logits)
  w = torch.where(boundary > 0, boundary_weight, 1.0)
  per_clip = torch.where(mask > 0, w * _bce(logits, labels), 0.0).sum(1)
  per_clip = per_clip / mask.sum(1).clamp_min(1.0)
  return _per_clip_mean(per_clip, mask)


def total_loss(out, batch, cfg):
  """losses.total_loss -> (total, dict of the terms)."""
  if cfg["loc_loss"] != "bal":
    raise NotImplementedError(f"loc_loss {cfg['loc_loss']!r} is not ported")
  frame_mask = batch["frame_mask"].float()
  clip_valid = (frame_mask.sum(1) > 0).float()
  l_me = sigmoid_focal_loss(out["me_logit"], batch["me_label"], clip_valid,
                            cfg["focal_alpha"], cfg["focal_gamma"])
  speaking = batch["speaking"].long()
  state_mask = frame_mask * (speaking != -1).float()
  l_state = sigmoid_focal_loss(out["state_logits"], (speaking == 1).float(), state_mask,
                               cfg["focal_alpha"], cfg["focal_gamma"])
  logits, labels = out["loc_logits"].float(), batch["labels"].float()
  l_loc = (focal_tversky_loss(logits, labels, frame_mask, cfg["tversky_alpha"],
                              cfg["tversky_beta"], cfg["tversky_gamma"])
           + cfg["boundary_lambda"] * boundary_bce(logits, labels, batch["boundary"].float(),
                                                   frame_mask, cfg["boundary_weight"]))
  total = cfg["loc_weight"] * l_loc
  if cfg["me_weight"]:
    total = total + cfg["me_weight"] * l_me
  if cfg["state_weight"]:
    total = total + cfg["state_weight"] * l_state
  return total, dict(loss=total, me_loss=l_me, state_loss=l_state, loc_loss=l_loc)


# ---------------------------------------------------------------------------------------
# Flax parameter names and layouts.
# ---------------------------------------------------------------------------------------


def flax_layout(model: MELDAE) -> list:
  """[(torch param name, [flax names], convert(get) -> np.ndarray)] for every parameter.

  `get(name)` returns a flax array by its '/'-joined name; `convert` turns it (or them)
  into the torch layout: Dense (in, out) -> (out, in); DenseGeneral (D, H, dh) ->
  (H*dh, D); conv HWIO -> OIHW; scanned blocks slice the leading `depth` axis; the
  LSTM's eight per-gate arrays concatenate in the gate order i, f, g, o.
  """
  rows = []

  def dense(tname, fname, index=None):
    pick = (lambda a: a) if index is None else (lambda a: a[index])  # noqa: E731
    rows.append((f"{tname}.weight", [f"{fname}/kernel"],
                 lambda get, f=fname: (lambda k: k.reshape(k.shape[0], -1).T)(
                     pick(get(f"{f}/kernel")))))
    rows.append((f"{tname}.bias", [f"{fname}/bias"],
                 lambda get, f=fname: pick(get(f"{f}/bias")).reshape(-1)))

  def out_dense(tname, fname, index):  # MHDPA out: (H, dh, D) kernel
    rows.append((f"{tname}.weight", [f"{fname}/kernel"],
                 lambda get, f=fname: (lambda k: k.reshape(-1, k.shape[-1]).T)(
                     get(f"{f}/kernel")[index])))
    rows.append((f"{tname}.bias", [f"{fname}/bias"],
                 lambda get, f=fname: get(f"{f}/bias")[index]))

  def norm(tname, fname, index=None):
    pick = (lambda a: a) if index is None else (lambda a: a[index])  # noqa: E731
    rows.append((f"{tname}.weight", [f"{fname}/scale"],
                 lambda get, f=fname: pick(get(f"{f}/scale"))))
    rows.append((f"{tname}.bias", [f"{fname}/bias"],
                 lambda get, f=fname: pick(get(f"{f}/bias"))))

  def plain(tname, fname):
    rows.append((tname, [fname], lambda get, f=fname: get(f)))

  bb = "backbone"
  rows.append(("backbone.embedding.weight", [f"{bb}/embedding/kernel"],
               lambda get: get(f"{bb}/embedding/kernel").transpose(3, 2, 0, 1)))
  plain("backbone.embedding.bias", f"{bb}/embedding/bias")
  plain("backbone.cls", f"{bb}/cls")
  plain("backbone.pos_embedding", f"{bb}/pos_embedding")
  blk = f"{bb}/Transformer/encoderblock"
  for i in range(len(model.backbone.blocks)):
    t = f"backbone.blocks.{i}"
    norm(f"{t}.norm0", f"{blk}/LayerNorm_0", i)
    norm(f"{t}.norm1", f"{blk}/LayerNorm_1", i)
    for p in ("query", "key", "value"):
      dense(f"{t}.attn.{p}", f"{blk}/MultiHeadDotProductAttention_0/{p}", i)
    out_dense(f"{t}.attn.out", f"{blk}/MultiHeadDotProductAttention_0/out", i)
    dense(f"{t}.fc0", f"{blk}/MlpBlock_0/Dense_0", i)
    dense(f"{t}.fc1", f"{blk}/MlpBlock_0/Dense_1", i)
  norm("backbone.encoder_norm", f"{bb}/Transformer/encoder_norm")

  for direction in ("forward", "backward"):
    cell = f"temporal/{direction}_cell"
    t = f"temporal.{direction}_lstm"
    names_i = [f"{cell}/i{g}/kernel" for g in "ifgo"]
    names_h = [f"{cell}/h{g}/kernel" for g in "ifgo"]
    names_b = [f"{cell}/h{g}/bias" for g in "ifgo"]
    rows.append((f"{t}.weight_ih_l0", names_i,
                 lambda get, n=names_i: np.concatenate([get(x) for x in n], 1).T))
    rows.append((f"{t}.weight_hh_l0", names_h,
                 lambda get, n=names_h: np.concatenate([get(x) for x in n], 1).T))
    rows.append((f"{t}.bias_hh_l0", names_b,
                 lambda get, n=names_b: np.concatenate([get(x) for x in n])))
  dense("temporal.proj", "temporal/proj")

  plain("region_pool.temporal_embedding", "region_pool/temporal_embedding")
  plain("region_pool.region_embedding", "region_pool/region_embedding")

  plain("enhancer.queries", "enhancer/queries")
  for i in range(len(model.enhancer.layers)):
    t, f = f"enhancer.layers.{i}", f"enhancer/layer_{i}"
    for n in ("norm_q", "norm_kv", "norm_mlp"):
      norm(f"{t}.{n}", f"{f}_{n}")
    for p in ("query", "key", "value"):
      dense(f"{t}.cross_attention.{p}", f"{f}_cross_attention/{p}")
    plain(f"{t}.cross_attention.out_kernel", f"{f}_cross_attention/out_kernel")
    plain(f"{t}.cross_attention.out_bias", f"{f}_cross_attention/out_bias")
    dense(f"{t}.mlp.fc0", f"{f}_mlp/Dense_0")
    dense(f"{t}.mlp.fc1", f"{f}_mlp/Dense_1")
  norm("enhancer.encoder_norm", "enhancer/encoder_norm")

  for head in ("locator", "state", "me_classifier"):
    norm(f"{head}.norm", f"heads/{head}/norm")
    dense(f"{head}.hidden", f"heads/{head}/hidden")
    dense(f"{head}.out", f"heads/{head}/out")
  return rows


def load_flax(model: MELDAE, flat: dict) -> None:
  """Copies flax params (name -> array) into `model`; every trainable param once."""
  params = dict(model.named_parameters())
  layout = flax_layout(model)
  covered = {name for name, _, _ in layout}
  missing = [n for n, p in params.items() if p.requires_grad and n not in covered]
  if missing:
    raise KeyError(f"torch params without a flax source: {missing}")
  with torch.no_grad():
    for tname, _, convert in layout:
      value = np.ascontiguousarray(convert(lambda n: flat[n]))
      if tuple(value.shape) != tuple(params[tname].shape):
        raise ValueError(f"{tname}: flax {value.shape} vs torch {tuple(params[tname].shape)}")
      params[tname].copy_(torch.from_numpy(value))


def make_optimizer(model: MELDAE, cfg: dict) -> torch.optim.AdamW:
  """AdamW with the optimiser config's (regex, lr) groups and `kernel`-only decay."""
  rx_decay = re.compile(cfg["weight_decay_regex"] or "(?!)")
  groups = [(re.compile(rx), lr) for rx, lr in cfg["groups"]]
  params = dict(model.named_parameters())
  buckets = {}
  for tname, fnames, _ in flax_layout(model):
    fname = fnames[0]
    lr = next(lr for rx, lr in groups if rx.fullmatch(fname))
    if not lr:
      params[tname].requires_grad_(False)
      continue
    wd = cfg["weight_decay"] if rx_decay.fullmatch(fname) else 0.0
    buckets.setdefault((lr, wd), []).append(params[tname])
  return torch.optim.AdamW(
      [dict(params=p, lr=lr, weight_decay=wd) for (lr, wd), p in buckets.items()],
      betas=(cfg["b1"], cfg["b2"]), eps=cfg["eps"])


# ---------------------------------------------------------------------------------------
# Benchmark and check.
# ---------------------------------------------------------------------------------------


def to_torch(batch: dict, device: str = "cpu") -> dict:
  return {k: torch.from_numpy(np.asarray(v)).to(device) for k, v in batch.items()}


def autocast(dtype: str, device: str = "cpu"):
  if dtype == "bf16":
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
  return contextlib.nullcontext()


def sync(device: str) -> None:
  """Waits for the device's queued work (CPU ops are synchronous already)."""
  if torch.device(device).type == "cuda":
    torch.cuda.synchronize(device)


def matmul_peak(n: int = 4096, reps: int = 3, device: str = "cpu",
                dtype=torch.float32) -> float | None:
  if n <= 0:
    return None
  a = torch.randn(n, n, device=device, dtype=dtype)
  b = torch.randn(n, n, device=device, dtype=dtype)

  def mm():
    torch.mm(a, b)
    sync(device)

  times = common.time_steps(mm, reps, 1)
  return 2.0 * n ** 3 / statistics.median(times) / 1e9


def count_flops(fn) -> float | None:
  """FLOPs of one call by torch's FlopCounterMode (matmuls/convs/attention only)."""
  try:
    from torch.utils.flop_counter import FlopCounterMode  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  try:
    with FlopCounterMode(display=False) as counter:
      fn()
  except RuntimeError:  # e.g. oneDNN's bf16 LSTM under the counter's decomposition
    return None
  return float(counter.get_total_flops())


def run(config: str, mode: str, backend: str = "eager", dtype: str = "fp32",
        steps: int = 10, warmup: int = 2, peak_size: int = 4096, seed: int = 0,
        batch_size: int | None = None, device: str = "cpu",
        turns: common.Turns | None = None) -> dict:
  """The figures of one configuration; `batch_size` replaces the config's B, `device`
  is torch's ('cuda' for the GPU rows of gpu_suite.sh); `turns`: see `common.Turns`."""
  shape = common.with_batch(common.CONFIGS[config], batch_size)
  t = shape.frames
  torch.manual_seed(seed)
  model = MELDAE(shape, t, common.NUM_CLASSES).to(device)
  batch = to_torch(common.make_batch(shape, t, seed), device)
  n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
  figures = dict(config=config, mode=mode, dtype=dtype, backend=backend, frames=t,
                 batch=shape.batch, steps=steps, warmup=warmup, variant=shape.variant,
                 image_size=shape.image_size, params=n_params, device=device)

  def step_fn(step_dtype: str, compiled: bool, no_grad=torch.inference_mode):
    """One train step or forward pass, blocking (`sync` on an accelerator)."""

    def forward_loss(video, frame_mask, b):
      with autocast(step_dtype, device):
        out = model(video, frame_mask)
        return total_loss(out, b, LOSS_CONFIG)

    def forward(video, frame_mask):
      with autocast(step_dtype, device):
        return model(video, frame_mask)

    if compiled:
      forward_loss, forward = torch.compile(forward_loss), torch.compile(forward)

    def train_step():
      opt.zero_grad(set_to_none=True)
      loss, _ = forward_loss(batch["video"], batch["frame_mask"], batch)
      loss.backward()
      torch.nn.utils.clip_grad_norm_(trainable, OPT_CONFIG["clip_norm"])
      opt.step()
      holder["loss"] = float(loss.detach())  # waits for the loss, not the update
      sync(device)

    def infer_step():
      with no_grad():
        holder["out"] = forward(batch["video"], batch["frame_mask"])
      sync(device)

    return train_step if mode == "train" else infer_step

  holder = {}
  if mode == "train":
    model.train()
    opt = make_optimizer(model, OPT_CONFIG)
    trainable = [p for p in model.parameters() if p.requires_grad]
  elif mode == "infer":
    model.eval()
  else:
    raise ValueError(f"unknown mode {mode!r}")
  one_step = step_fn(dtype, backend == "compile")

  compile_s = None
  if backend == "compile":  # the first call compiles (forward and backward graphs)
    t0 = time.perf_counter()
    one_step()
    compile_s = time.perf_counter() - t0
  rss_compiled = common.peak_rss_mib()
  times, rss = common.rss_figures(
      lambda: common.time_steps(one_step, steps, warmup, turns) if steps > 0 else [],
      rss_compiled)
  figures.update(common.timing_figures(times, shape, t))
  figures["cpu_s_per_step"] = rss.pop("steps_cpu_s") / max(1, steps + warmup)
  figures["compile_seconds"] = compile_s
  figures.update(rss)
  # The count does not depend on backend or dtype; fp32 eager always runs under it.
  # Grad mode on: the counter's module hooks fail under inference_mode/no_grad.
  flops = count_flops(step_fn("fp32", False, contextlib.nullcontext))
  figures["flops_per_step"] = flops
  figures["flops_source"] = ("torch FlopCounterMode, eager fp32 (matmul/conv/bmm only)"
                             if flops else None)
  med = figures["median_s"]
  figures["gflops_per_s"] = flops / med / 1e9 if flops and med else None
  peak = matmul_peak(peak_size, device=device)
  figures["matmul_peak_gflops_per_s"] = peak
  figures["fraction_of_peak"] = (figures["gflops_per_s"] / peak
                                 if peak and figures["gflops_per_s"] else None)
  if torch.device(device).type == "cuda":  # MFU as step.py's accelerator_figures
    kind = torch.cuda.get_device_name(device)
    figures.update(device_kind=kind, backend="gpu", **common.mfu_figures(
        figures["gflops_per_s"], kind, matmul_peak(8192, 20, device, torch.bfloat16),
        8192))
  if "loss" in holder:
    figures["loss"] = holder["loss"]
  if "out" in holder:
    figures["loc_logits_finite"] = bool(torch.isfinite(holder["out"]["loc_logits"]).all())
  figures.update(torch_version=torch.__version__, torch_threads=torch.get_num_threads(),
                 **common.host_figures())
  return figures


def check(path: str, rtol: float = 1e-4) -> dict:
  """Loads step.py's export, reruns it in torch, compares; 'ok' False when off."""
  z = np.load(path)
  meta = json.loads(str(z["meta"]))
  if meta["dtype"] != "fp32":
    raise ValueError("--check needs an fp32 export")
  m = meta["model"]
  shape = common.Shape(m["variant"], m["image_size"], m["num_frames"],
                       int(z["batch/video"].shape[0]), m["num_regions"],
                       m["num_queries"], m["enhancer_heads"])
  unported = {k: m[k] for k, want in (("backbone", "vit"), ("temporal", "bilstm"),
                                      ("enhancer", True), ("fusion", "per_frame"),
                                      ("enhancer_layers", 1)) if m[k] != want}
  if unported:
    raise ValueError(f"the port covers only the benchmark's model; export has {unported}")
  flat = common.stack_blocks({k[len("param/"):]: z[k] for k in z.files if k.startswith("param/")})
  model = MELDAE(shape, m["num_frames"], m["num_classes"])
  load_flax(model, flat)
  n_torch = sum(p.numel() for p in model.parameters() if p.requires_grad)
  n_flax = sum(v.size for v in flat.values())
  batch = to_torch({k[len("batch/"):]: z[k] for k in z.files if k.startswith("batch/")})
  model.eval()
  out = model(batch["video"], batch["frame_mask"])
  loss, aux = total_loss(out, batch, meta["loss_config"])
  loss.backward()

  report = dict(config=meta["config"], params_torch=n_torch, params_flax=int(n_flax),
                rtol=rtol, diffs={})
  ok = n_torch == n_flax

  def compare(name, got, want):
    nonlocal ok
    got = got.detach().numpy() if torch.is_tensor(got) else np.asarray(got)
    diff = float(np.max(np.abs(got - want))) if want.size else 0.0
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    report["diffs"][name] = dict(max_abs=diff, rel=diff / scale)
    ok = ok and diff <= rtol * scale

  for k in ("loc_logits", "state_logits", "me_logit"):
    compare(f"out/{k}", out[k], z[f"out/{k}"])
  for k, v in aux.items():
    compare(f"loss/{k}", v, z[f"loss/{k}"])

  # Gradients: in the torch layout, relative to the largest gradient of all.
  grads = common.stack_blocks({k[len("grad/"):]: z[k] for k in z.files if k.startswith("grad/")})
  if not grads:  # exported without them
    report["diffs"]["grads"] = None
  else:
    params = dict(model.named_parameters())
    worst, worst_name, gmax, sq = 0.0, None, 0.0, 0.0
    for tname, _, convert in flax_layout(model):
      want = np.asarray(convert(lambda n: grads[n]))
      got = params[tname].grad.numpy()
      sq += float(np.sum(got.astype(np.float64) ** 2))
      gmax = max(gmax, float(np.max(np.abs(want))))
      d = float(np.max(np.abs(got - want)))
      if d > worst:
        worst, worst_name = d, tname
    report["diffs"]["grads"] = dict(max_abs=worst, rel=worst / max(gmax, 1e-30),
                                    worst=worst_name, largest_grad=gmax)
    ok = ok and worst <= rtol * max(gmax, 1e-30)
    compare("grad_norm", np.sqrt(sq), z["grad_norm"])
  report["ok"] = bool(ok)
  return report


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="Ti112", choices=sorted(common.CONFIGS))
  p.add_argument("--mode", default="train", choices=("train", "infer"))
  p.add_argument("--backend", default="eager", choices=("eager", "compile"))
  p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--peak-size", type=int, default=4096)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--turns", default=None, metavar="R,W",
                 help="pipes from compare.py --lockstep: timed steps in turns")
  p.add_argument("--batch", type=int, default=None,
                 help="B clips (default: the config's; the paper's batch is 16)")
  p.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
  p.add_argument("--threads", type=int, default=None,
                 help="torch.set_num_threads (default: torch's, the core count)")
  p.add_argument("--check", default=None, metavar="NPZ",
                 help="compare with the JAX values exported by step.py --export")
  # fp32 agreement is ~2e-6; 1e-3 would pass the tanh GELU in the ViT (3.5e-4 off).
  p.add_argument("--rtol", type=float, default=1e-4)
  return p.parse_args(argv)


def main(argv=None):
  a = parse_args(argv)
  if a.threads:
    torch.set_num_threads(a.threads)
  if a.check:
    report = check(a.check, a.rtol)
    common.emit(report)
    sys.exit(0 if report["ok"] else 1)
  common.emit(run(a.config, a.mode, a.backend, a.dtype, a.steps, a.warmup, a.peak_size,
                  a.seed, a.batch, a.device, common.Turns(a.turns) if a.turns else None))


if __name__ == "__main__":
  os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", "/tmp/torchinductor_meldae")
  main()
