"""MELDAE (SPEC §1): frame encoder -> Bi-LSTM + region pooling -> Enhancer -> fusion -> heads."""
import einops
import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from meldae_jax.models import fusion as fusion_lib
from meldae_jax.models.enhancer import Enhancer
from meldae_jax.models.heads import Heads, masked_mean
from meldae_jax.models.region_pool import RegionPool
from meldae_jax.models.resnet import ResNet
from meldae_jax.models.temporal import Temporal
from meldae_jax.ops import blas_dot


def resnet_width(cfg) -> int:
  """D of the ResNet backbone: `resnet_width`, or 0 for the width of `variant`'s ViT, so
  that Table 3's ResNet-50 run changes the backbone alone (a fixed 768 made every later
  part 12x wider than on the ViT-Mu configs it replaced, 40x the parameters)."""
  from meldae_jax.models.vit import vit_dims  # pylint: disable=g-import-not-at-top
  return int(cfg.resnet_width) or vit_dims(cfg.variant)["width"]


def make_backbone(cfg, dtype, name="backbone"):
  """ViT or ResNet-50 frame encoder; both map (N,H,W,3) -> (cls, patches)."""
  if cfg.backbone == "vit":
    from meldae_jax.models.vit import ViT  # pylint: disable=g-import-not-at-top
    return ViT(cfg.variant, scan=cfg.scan_blocks, remat_policy=cfg.remat_policy,
               dropout=cfg.dropout, stem=cfg.get("vit_stem", "patch"),
               stem_hidden=cfg.get("vit_stem_hidden", 32), dtype=dtype, name=name)
  if cfg.backbone == "resnet50":
    # The ViT's memory and compile settings: silently ignored, a run would not get them.
    if cfg.remat_policy != "none" or cfg.scan_blocks:
      raise ValueError(
          f"model.remat_policy={cfg.remat_policy!r} / model.scan_blocks={cfg.scan_blocks} "
          "apply to the ViT backbone only; with backbone='resnet50' leave them 'none' / False")
    return ResNet(width=resnet_width(cfg), stages=tuple(cfg.resnet_stages),
                  base_width=cfg.resnet_base_width, dtype=dtype, name=name)
  raise ValueError(f"unknown backbone {cfg.backbone!r}")


class MELDAE(nn.Module):
  """Micro-expression localisation and detection with the Enhancer."""
  config: ml_collections.ConfigDict

  @nn.compact
  def __call__(self, video, *, frame_mask=None, train: bool = False,
               return_attention: bool = False):
    """video (B,T,H,W,3) uint8; frame_mask (B,T) 1 real / 0 padding."""
    with blas_dot.matmul_operands(self.config.get("matmul_dtype") or None):
      return self._forward(video, frame_mask, train, return_attention)

  @nn.nowrap
  def _forward(self, video, frame_mask, train, return_attention):
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    b, t = video.shape[:2]
    x = video.astype(jnp.float32) / 127.5 - 1.0
    x = einops.rearrange(x.astype(dtype), "b t h w c -> (b t) h w c")
    cls, patches = make_backbone(cfg, dtype)(x, train=train)
    cls = einops.rearrange(cls, "(b t) d -> b t d", b=b)
    patches = einops.rearrange(patches, "(b t) h w d -> b t h w d", b=b)
    d = cls.shape[-1]
    mask = (jnp.ones((b, t), jnp.float32) if frame_mask is None
            else frame_mask.astype(jnp.float32))

    f_global = Temporal(d, cfg.temporal, dtype=dtype, hidden=cfg.get("temporal_hidden", 0),
                        name="temporal")(
        cls, frame_mask)
    clip_feats = [masked_mean(f_global, mask)]
    frame_feats = f_global
    aux = None
    if cfg.enhancer:
      g = cfg.num_regions
      if int(cfg.enhancer_layers) < 1:
        raise ValueError(f"model.enhancer_layers must be >= 1, got {cfg.enhancer_layers} "
                         "(model.enhancer=False is the ablation without the enhancer)")
      regional = RegionPool(g, cfg.num_frames, dtype=dtype, name="region_pool")(
          patches)
      f_enh, aux = Enhancer(cfg.num_queries, cfg.enhancer_layers,
                            cfg.enhancer_heads, dropout=cfg.dropout, dtype=dtype,
                            name="enhancer")(regional, (t, g), frame_mask=frame_mask,
                                             train=train)
      clip_feats.append(jnp.mean(f_enh.astype(jnp.float32), axis=1))
      if cfg.fusion == "per_frame":
        e = fusion_lib.per_frame_readout(aux["probs"], aux["v"],
                                         aux["out_kernel"], t)
        frame_feats = jnp.concatenate([f_global, e.astype(f_global.dtype)], -1)
      elif cfg.fusion == "tokens":
        frame_feats = fusion_lib.TokenFusion(
            cfg.enhancer_heads, dropout=cfg.dropout, dtype=dtype,
            name="fusion")(f_global, f_enh, frame_mask=frame_mask, train=train)
      else:
        raise ValueError(f"unknown fusion {cfg.fusion!r}")
    elif return_attention:
      raise ValueError("return_attention needs enhancer=True")

    out = Heads(cfg.num_classes, hidden=d, dropout=cfg.dropout, dtype=dtype,
                name="heads")(frame_feats, jnp.concatenate(clip_feats, -1),
                              train=train)
    if return_attention:
      out["attention"] = aux["attention"]
    return out
