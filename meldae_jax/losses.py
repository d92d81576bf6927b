"""MELDAE losses (SPEC §2), all from logits and all masked.

Probabilities and their complements come from `sigmoid(x)` / `sigmoid(-x)` and logs from
`log_sigmoid`, so logits of +-1e4 give finite values and gradients. Shapes: per-frame
logits/labels `(B,T,K)` with a frame mask `(B,T)`; clip-level `(B,)` with a mask `(B,)`.
"""
import jax
import jax.numpy as jnp
import ml_collections
import optax

LOC_LOSSES = ("bal", "bce", "iou", "focal_tversky", "mae", "mse", "smooth_l1")


def default_loss_config() -> ml_collections.ConfigDict:
  """The paper's weights: 0.5 L_ME + 0.2 L_State + 1.0 L_loc, L_loc = BAL."""
  c = ml_collections.ConfigDict()
  c.me_weight = 0.5
  c.state_weight = 0.2
  c.loc_weight = 1.0
  c.loc_loss = "bal"           # one of LOC_LOSSES
  c.boundary_lambda = 1.0
  c.boundary_weight = 10.0
  c.focal_alpha = 0.25
  c.focal_gamma = 2.0
  c.tversky_alpha = 0.7        # weight of false negatives
  c.tversky_beta = 0.3         # weight of false positives
  c.tversky_gamma = 0.75
  return c


def _f32(*xs):
  return [jnp.asarray(x, jnp.float32) for x in xs]


def _frame_mask(mask, like):
  """(B,T) frame mask broadcast to `like` (B,T[,K]); None -> all valid."""
  if mask is None:
    return jnp.ones(like.shape, jnp.float32)
  mask = jnp.asarray(mask, jnp.float32)
  return jnp.broadcast_to(mask.reshape(mask.shape + (1,) * (like.ndim - mask.ndim)),
                          like.shape)


def _masked_mean(x, mask):
  return jnp.sum(jnp.where(mask > 0, x, 0.0)) / jnp.maximum(jnp.sum(mask), 1.0)


def _bce(logits, labels):
  """Binary cross-entropy from logits, elementwise."""
  return -(labels * jax.nn.log_sigmoid(logits)
           + (1.0 - labels) * jax.nn.log_sigmoid(-logits))


def _per_clip_mean(values, mask):
  """Mean over clips (and classes) of per-clip values (B[,K]); clips with no valid
  frame (mask (B,T[,K]) all 0) are left out."""
  valid = (jnp.sum(mask, axis=1) > 0).astype(jnp.float32)
  return _masked_mean(values, valid)


def sigmoid_focal_loss(logits, labels, mask=None, alpha=0.25, gamma=2.0):
  """Focal loss (Lin et al.) averaged over valid items."""
  logits, labels = _f32(logits, labels)
  mask = _frame_mask(mask, logits)
  one_minus_pt = labels * jax.nn.sigmoid(-logits) + (1 - labels) * jax.nn.sigmoid(logits)
  alpha_t = alpha * labels + (1 - alpha) * (1 - labels)
  loss = alpha_t * _bce(logits, labels) * one_minus_pt ** gamma
  return _masked_mean(loss, mask)


def _soft_counts(logits, labels, mask):
  """Masked soft TP, FN, FP summed over frames: (B,K) each."""
  s, not_s = jax.nn.sigmoid(logits), jax.nn.sigmoid(-logits)
  m = jnp.where(mask > 0, 1.0, 0.0)
  tp = jnp.sum(s * labels * m, axis=1)
  fn = jnp.sum(not_s * labels * m, axis=1)
  fp = jnp.sum(s * (1 - labels) * m, axis=1)
  return tp, fn, fp


def focal_tversky_loss(logits, labels, mask=None, alpha=0.7, beta=0.3, gamma=0.75):
  """(1 - TI)**gamma per clip and class, TI with +1 smoothing; mean over both."""
  logits, labels = _f32(logits, labels)
  mask = _frame_mask(mask, logits)
  tp, fn, fp = _soft_counts(logits, labels, mask)
  ti = (tp + 1.0) / (tp + alpha * fn + beta * fp + 1.0)
  # Clamp: d/dx x**0.75 is infinite at 0 (a perfect clip at saturated logits).
  loss = jnp.maximum(1.0 - ti, 1e-6) ** gamma
  return _per_clip_mean(loss, mask)


def soft_iou_loss(logits, labels, mask=None):
  """1 - soft IoU (+1 smoothing) per clip and class, mean over both."""
  logits, labels = _f32(logits, labels)
  mask = _frame_mask(mask, logits)
  tp, fn, fp = _soft_counts(logits, labels, mask)
  return _per_clip_mean(1.0 - (tp + 1.0) / (tp + fn + fp + 1.0), mask)


def boundary_bce(logits, labels, boundary, mask=None, boundary_weight=10.0):
  """-(1/T_valid) sum_t w_t BCE_t per clip and class (w = boundary_weight on
  onset/offset frames, 1 elsewhere), mean over clips and classes."""
  logits, labels, boundary = _f32(logits, labels, boundary)
  mask = _frame_mask(mask, logits)
  w = jnp.where(boundary > 0, boundary_weight, 1.0)
  per_clip = jnp.sum(jnp.where(mask > 0, w * _bce(logits, labels), 0.0), axis=1)
  per_clip = per_clip / jnp.maximum(jnp.sum(mask, axis=1), 1.0)
  return _per_clip_mean(per_clip, mask)


def bal_loss(logits, labels, boundary, mask=None, *, boundary_lambda=1.0,
             boundary_weight=10.0, alpha=0.7, beta=0.3, gamma=0.75):
  """Boundary-Aware Loss: FocalTversky + lambda * BoundaryBCE (paper eq. 2)."""
  return (focal_tversky_loss(logits, labels, mask, alpha, beta, gamma)
          + boundary_lambda * boundary_bce(logits, labels, boundary, mask,
                                           boundary_weight))


def bce_loss(logits, labels, mask=None):
  """Plain BCE averaged over valid frames and classes."""
  logits, labels = _f32(logits, labels)
  return _masked_mean(_bce(logits, labels), _frame_mask(mask, logits))


def regression_loss(logits, labels, mask=None, kind="mse"):
  """mae / mse / smooth_l1 (beta 1, as PyTorch) on sigmoid probabilities."""
  logits, labels = _f32(logits, labels)
  d = jax.nn.sigmoid(logits) - labels
  if kind == "mae":
    err = jnp.abs(d)
  elif kind == "mse":
    err = jnp.square(d)
  elif kind == "smooth_l1":
    err = optax.huber_loss(d, delta=1.0)
  else:
    raise ValueError(f"unknown regression loss {kind!r}")
  return _masked_mean(err, _frame_mask(mask, logits))


def loc_loss(logits, labels, boundary, mask, cfg):
  """The localisation loss selected by `cfg.loc_loss`."""
  kind = cfg.loc_loss
  tv = dict(alpha=cfg.tversky_alpha, beta=cfg.tversky_beta, gamma=cfg.tversky_gamma)
  if kind == "bal":
    return bal_loss(logits, labels, boundary, mask,
                    boundary_lambda=cfg.boundary_lambda,
                    boundary_weight=cfg.boundary_weight, **tv)
  if kind == "focal_tversky":
    return focal_tversky_loss(logits, labels, mask, **tv)
  if kind == "bce":
    return bce_loss(logits, labels, mask)
  if kind == "iou":
    return soft_iou_loss(logits, labels, mask)
  if kind in ("mae", "mse", "smooth_l1"):
    return regression_loss(logits, labels, mask, kind)
  raise ValueError(f"unknown loc_loss {kind!r}; expected one of {LOC_LOSSES}")


def total_loss(outputs, batch, cfg):
  """w_ME L_ME + w_State L_State + w_loc L_loc -> (scalar, aux of each term).

  L_State is the per-frame focal loss of `state_logits` against `speaking` over real
  frames whose speaking label is known (speaking != -1): the per-frame labels are
  denser than the clip majority and the clip probability is the mean of these logits.
  Clips without any real frame are left out of L_ME.
  """
  frame_mask = jnp.asarray(batch["frame_mask"], jnp.float32)
  clip_valid = (jnp.sum(frame_mask, axis=1) > 0).astype(jnp.float32)
  l_me = sigmoid_focal_loss(outputs["me_logit"], batch["me_label"], clip_valid,
                            cfg.focal_alpha, cfg.focal_gamma)
  speaking = jnp.asarray(batch["speaking"], jnp.int32)
  state_mask = frame_mask * (speaking != -1)
  l_state = sigmoid_focal_loss(outputs["state_logits"], speaking == 1, state_mask,
                               cfg.focal_alpha, cfg.focal_gamma)
  l_loc = loc_loss(outputs["loc_logits"], batch["labels"], batch["boundary"],
                   frame_mask, cfg)
  total = cfg.loc_weight * l_loc
  if cfg.me_weight:
    total += cfg.me_weight * l_me
  if cfg.state_weight:  # weight 0: the term is reported but cannot leak a NaN in.
    total += cfg.state_weight * l_state
  aux = dict(loss=total, me_loss=l_me, state_loss=l_state, loc_loss=l_loc)
  return total, aux
