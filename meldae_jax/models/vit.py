"""ViT frame encoder (SPEC §1.1), with big_vision parameter names.

Names follow big_vision's `vit.py` (`embedding`, `cls`, `pos_embedding`,
`Transformer/encoderblock/...`, `Transformer/encoder_norm`) so its checkpoints
map one to one; `pretrained.py` converts timm/HF ones. Two deliberate
differences from big_vision:
  * `pos_embedding` has a slot for the cls token, `(1, 1 + h*w, D)`, as in
    timm/HF/vit_jax, so those load exactly; big_vision checkpoints (posemb added
    before the cls token) load with that slot zero, which is the same function.
  * the MLP uses the exact (erf) GELU, as timm and HF do; big_vision uses flax's
    default tanh approximation (the two differ by < 1e-3 per unit).
"""
from typing import Any

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from meldae_jax.models import attention
from meldae_jax.models import gelu
from meldae_jax.models import layers
from meldae_jax.ops import blas_attention
from meldae_jax.ops import blas_dot
from meldae_jax.ops import cpu_bias_gelu
from meldae_jax.ops import cpu_layer_norm

# name -> (width, depth, mlp_dim, num_heads); Table 2 of arXiv:2106.04560.
# `Mu` is a toy size for tests and the CPU demo.
VARIANTS = {
    "Mu": dict(width=64, depth=2, mlp_dim=128, num_heads=2),
    "Ti": dict(width=192, depth=12, mlp_dim=768, num_heads=3),
    "S": dict(width=384, depth=12, mlp_dim=1536, num_heads=6),
    "B": dict(width=768, depth=12, mlp_dim=3072, num_heads=12),
    "L": dict(width=1024, depth=24, mlp_dim=4096, num_heads=16),
}

_policies = jax.checkpoint_policies
# 'dots' and 'dots_no_batch' save the matmuls' outputs whatever runs them: XLA's dots,
# or the CPU custom calls (`ops/`), which name theirs since a policy cannot see into them.
REMAT_POLICIES = {
    "none": None,  # no rematerialisation
    "full": _policies.nothing_saveable,
    "dots": _policies.save_from_both_policies(
        _policies.checkpoint_dots, _policies.save_only_these_names(
            blas_dot.DOT_NAME, blas_attention.BATCHED_DOT_NAME)),
    "dots_no_batch": _policies.save_from_both_policies(
        _policies.dots_with_no_batch_dims_saveable,
        _policies.save_only_these_names(blas_dot.DOT_NAME)),
}

LN_EPS = 1e-6


def vit_dims(variant: str) -> dict[str, int]:
  """'B/16' -> dict(width, depth, mlp_dim, num_heads, patch)."""
  name, sep, patch = str(variant).partition("/")
  if name not in VARIANTS or not sep or not patch.isdigit() or int(patch) < 1:
    valid = ", ".join(f"{n}/<patch>" for n in VARIANTS)
    raise ValueError(
        f"unknown ViT variant {variant!r}; valid: {valid} "
        "(patch a positive int, e.g. 'B/16', 'S/8')")
  return dict(VARIANTS[name], patch=int(patch))


def remat_policy(name: str):
  """Config string -> jax.checkpoint policy (None: no remat)."""
  if name not in REMAT_POLICIES:
    raise ValueError(
        f"unknown remat_policy {name!r}; valid: {sorted(REMAT_POLICIES)}")
  return REMAT_POLICIES[name]


def _part(init, names):
  return nn.with_logical_partitioning(init, names)


class DenseGelu(nn.Dense):
  """`nn.Dense` (same parameters) followed by the exact GELU, its bias added by
  `cpu_bias_gelu.bias_gelu` together with the GELU: one pass on both CPU cores where
  that path is on, `exact_gelu(h + b)` elsewhere."""

  @nn.compact
  def __call__(self, inputs):
    kernel = self.param("kernel", self.kernel_init, (inputs.shape[-1], self.features),
                        self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
    inputs, kernel = nn.dtypes.promote_dtype(inputs, kernel, dtype=self.dtype)
    dot_general = (self.dot_general_cls() if self.dot_general_cls is not None
                   else self.dot_general or jax.lax.dot_general)
    h = dot_general(inputs, kernel, (((inputs.ndim - 1,), (0,)), ((), ())),
                    precision=self.precision)
    if layers.low_precision(h.dtype):
      return gelu.exact_gelu(layers.add_bias(h, bias))  # the bias's gradient in float32
    return cpu_bias_gelu.bias_gelu(h, bias.astype(h.dtype))


class MlpBlock(nn.Module):
  """Transformer feed-forward block (Dense -> GELU -> Dense)."""
  mlp_dim: int
  dropout: float = 0.0
  deterministic: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    bias_init = nn.initializers.normal(stddev=1e-6)
    xavier = nn.initializers.xavier_uniform()
    x = DenseGelu(self.mlp_dim, dtype=self.dtype, bias_init=bias_init,
                  kernel_init=_part(xavier, ("embed", "mlp")),
                  dot_general=blas_dot.dot_general, name="Dense_0")(x)
    x = nn.Dropout(rate=self.dropout)(x, self.deterministic)
    return layers.Dense(d, dtype=self.dtype, bias_init=bias_init,
                    kernel_init=_part(xavier, ("mlp", "embed")),
                    dot_general=blas_dot.dot_general, name="Dense_1")(x)


class Encoder1DBlock(nn.Module):
  """Pre-LN block: x + MHSA(LN(x)), then x + MLP(LN(x)).

  Returns `(x, None)` so the same module is an `nn.scan` body.
  """
  mlp_dim: int
  num_heads: int
  dropout: float = 0.0
  deterministic: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, _=None):
    xavier = nn.initializers.xavier_uniform()
    y = cpu_layer_norm.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="LayerNorm_0")(x)
    y = attention.SelfAttention(
        num_heads=self.num_heads, dtype=self.dtype,
        kernel_init=_part(xavier, ("embed", "heads", "kv")),
        out_kernel_init=_part(xavier, ("heads", "kv", "embed")),
        name="MultiHeadDotProductAttention_0")(y)
    y = nn.Dropout(rate=self.dropout)(y, self.deterministic)
    x = x + y
    y = cpu_layer_norm.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="LayerNorm_1")(x)
    y = MlpBlock(mlp_dim=self.mlp_dim, dropout=self.dropout,
                 deterministic=self.deterministic, dtype=self.dtype)(y)
    y = nn.Dropout(rate=self.dropout)(y, self.deterministic)
    return x + y, None


class Encoder(nn.Module):
  """Stack of blocks (scanned or unrolled) and the final LayerNorm."""
  depth: int
  mlp_dim: int
  num_heads: int
  dropout: float = 0.0
  deterministic: bool = True
  scan: bool = True
  remat_policy: str = "none"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    block_cls = Encoder1DBlock
    policy = remat_policy(self.remat_policy)
    if self.remat_policy != "none":
      # prevent_cse=False is only safe under scan; unrolled, XLA would CSE the
      # recomputation away and keep every activation (measured: more memory, not less).
      block_cls = nn.remat(block_cls, policy=policy, prevent_cse=not self.scan)
    kw = dict(mlp_dim=self.mlp_dim, num_heads=self.num_heads,
              dropout=self.dropout, deterministic=self.deterministic,
              dtype=self.dtype)
    if self.scan:
      block_cls = nn.scan(
          block_cls, length=self.depth,
          variable_axes={"params": 0},
          split_rngs={"params": True, "dropout": True},
          metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = block_cls(name="encoderblock", **kw)(x, None)
    else:
      for i in range(self.depth):
        x, _ = block_cls(name=f"encoderblock_{i}", **kw)(x)
    return cpu_layer_norm.LayerNorm(epsilon=LN_EPS, dtype=self.dtype,
                                    name="encoder_norm")(x)


class PatchEmbed(nn.Module):
  """ViT's linear patch embedding: `nn.Conv(D, (p, p), strides=p)`'s parameters and
  function, computed as patchify + one matmul (same FLOPs) so that the matmul takes the
  `blas_dot` path; XLA's CPU convolution ran this at under a third of matmul speed.
  (N,H,W,C) -> (N,H/p,W/p,D)."""
  features: int
  patch: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    p, c = self.patch, x.shape[-1]
    kernel = self.param("kernel", _part(nn.initializers.lecun_normal(),
                                        (None, None, None, "embed")),
                        (p, p, c, self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    h, w = x.shape[1] // p, x.shape[2] // p
    x = einops.rearrange(x[:, :h * p, :w * p], "n (h a) (w b) c -> n h w (a b c)",
                         a=p, b=p)
    y = blas_dot.dot_general(x, kernel.reshape(p * p * c, self.features),
                             (((3,), (0,)), ((), ())))
    return layers.add_bias(y, bias)


class HMlpStem(nn.Module):
  """Hierarchical MLP patch embedding (hMLP, Touvron et al. 2022, arXiv:2203.09795).

  The patch is embedded in stages, 4x4 pixels first and then 2x2 merges, each a Dense on
  non-overlapping cells followed by a GELU (but the last): a non-linear embedding at
  about the linear one's cost. A trained-from-scratch option: an ME is a few-pixel edge
  shift, which one linear map of a 16x16 patch mixes with everything else in the patch.
  The paper's BatchNorm between stages is left out, and not replaced by a LayerNorm: on
  motion views most cells are flat, and a per-cell LayerNorm blows their noise up to
  unit variance (measured: training collapsed). (N,H,W,C) -> (N,H//p,W//p,D): as
  `PatchEmbed`, the pixels past the last whole patch are left out.
  """
  patch: int
  width: int
  hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    if self.patch < 4 or self.patch & (self.patch - 1):  # not a power of two >= 4
      raise ValueError(f"the hMLP stem needs a patch of 4 * 2**k pixels, got {self.patch}")
    factors = [4] + [2] * (self.patch.bit_length() - 3)  # 16 -> 4, 2, 2
    h, w = x.shape[1] // self.patch, x.shape[2] // self.patch
    x = x[:, :h * self.patch, :w * self.patch]  # as the 'patch' stem: whole patches only
    for i, f in enumerate(factors):
      last = i == len(factors) - 1
      x = einops.rearrange(x, "n (h a) (w b) c -> n h w (a b c)", a=f, b=f)
      x = layers.Dense(self.width if last else self.hidden, dtype=self.dtype,
                   kernel_init=_part(nn.initializers.lecun_normal(),
                                     (None, "embed" if last else None)),
                   dot_general=blas_dot.dot_general, name=f"dense_{i}")(x)
      if not last:
        x = gelu.exact_gelu(x)
    return x


class ViT(nn.Module):
  """Frame encoder: images in [-1, 1] -> (cls (N, D), patches (N, h, w, D)).

  `stem`: 'patch' (ViT's linear patch embedding) or 'hmlp' (`HMlpStem`, `stem_hidden`
  channels; its weights have no pretrained counterpart).
  """
  variant: str
  scan: bool = True
  remat_policy: str = "none"
  dropout: float = 0.0
  stem: str = "patch"
  stem_hidden: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    dims = vit_dims(self.variant)
    remat_policy(self.remat_policy)  # Fail early on a bad name.
    p, d = dims["patch"], dims["width"]
    if min(x.shape[1:3]) < p:  # no patch: the CLS token alone, the same for every frame
      raise ValueError(f"{x.shape[1]}x{x.shape[2]} frames are smaller than one {p}-pixel "
                       f"patch of ViT {self.variant!r}: raise model.image_size")
    if self.stem == "patch":
      x = PatchEmbed(d, p, dtype=self.dtype, name="embedding")(x)
    elif self.stem == "hmlp":
      x = HMlpStem(p, d, self.stem_hidden, dtype=self.dtype, name="hmlp_stem")(x)
    else:
      raise ValueError(f"unknown ViT stem {self.stem!r}; valid: 'patch', 'hmlp'")
    n, h, w, _ = x.shape
    x = einops.rearrange(x, "n h w d -> n (h w) d")
    cls = self.param("cls", _part(nn.initializers.zeros, (None, None, "embed")),
                     (1, 1, d))
    pos = self.param(
        "pos_embedding",
        _part(nn.initializers.normal(stddev=1 / np.sqrt(d)),
              (None, None, "embed")),
        (1, 1 + h * w, d))
    cls = jnp.broadcast_to(cls.astype(x.dtype), (n, 1, d))
    x = layers.add_bias(jnp.concatenate([cls, x], axis=1), pos)
    x = nn.Dropout(rate=self.dropout)(x, not train)
    x = Encoder(depth=dims["depth"], mlp_dim=dims["mlp_dim"],
                num_heads=dims["num_heads"], dropout=self.dropout,
                deterministic=not train, scan=self.scan,
                remat_policy=self.remat_policy, dtype=self.dtype,
                name="Transformer")(x)
    patches = einops.rearrange(x[:, 1:], "n (h w) d -> n h w d", h=h, w=w)
    return x[:, 0], patches
