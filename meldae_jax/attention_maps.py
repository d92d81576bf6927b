r"""The enhancer's attention over the face's regions (the paper's Figures 6-8), per frame.

  python -m meldae_jax.attention_maps --workdir=WORKDIR --out=OUT [--split=test] \
      [--max_videos=20] [--config=configs/wdmd.py]

For every frame of a labelled split, the enhancer's attention probabilities (last layer,
(heads, queries, T, G, G) per window) are averaged over heads and queries, then over the
windows that hold the frame, giving a G x G map per frame (not renormalised: a uniform
window puts 1 / (n G G) on each region of each of its n real frames, n = T but in a
video shorter than the window; that level, averaged alike, is the "uniform level").
Three groups of frames are then averaged, as the paper's figures show them:

  ME apex          the apex frame of each ground-truth micro-expression (Figure 7)
  speech only      speaking frames at least `--margin_seconds` from any expression (Fig. 6)
  idle             listening frames at least as far from any expression (Figure 8)

Writes OUT/attention.npz (video_id -> (num_frames, G, G)), OUT/attention.png (the three
maps on one colour scale, rows named by the face band they cover) and
OUT/attention.json (per group: frames, the mean map, its mass per row and its peak over
the uniform level). Row bands follow the crop top to bottom; with G = 10 they carry the
paper's names (rows 1-2 forehead, 3-4 eyes & brows, 5-6 nose & cheeks, 7-8 mouth, 9-10
chin & jaw). On a leave-one-subject-out fold's workdir (`WORKDIR/fold_<S>/`) the splits
are the fold's: test is S's videos, validation and train the subjects it held out and
trained on. The workdir is only read. Exit status 2: no checkpoint, no enhancer
(`model.enhancer=False`), the split is missing or the corpus not built, or a record that
breaks the schema; 4: the checkpoint was saved with other model settings.
"""
from __future__ import annotations

import math
import os
from typing import Sequence

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np

from meldae_jax import checkpointing
from meldae_jax import cli
from meldae_jax import loso
from meldae_jax import predict
from meldae_jax import sharding
from meldae_jax import spot
from meldae_jax import train
from meldae_jax.data import pipeline
from meldae_jax.data import schema

PAPER_ROWS = ("forehead", "forehead", "eyes & brows", "eyes & brows", "nose & cheeks",
              "nose & cheeks", "mouth", "mouth", "chin & jaw", "chin & jaw")
GROUPS = ("ME apex", "speech only", "idle")


class AttentionError(ValueError):
  """A run or split the maps cannot be made from; the message names it."""


def attention_step(trainer: train.Trainer):
  """Jitted (params, batch) -> {'maps': (B, T, G*G) mean over heads and queries, ...}."""
  view, model = train.input_view(trainer.cfg), trainer.model
  if not model.config.get("enhancer", True):
    raise AttentionError("the model has no enhancer (model.enhancer=False): no attention")

  def step(params, batch):
    out = model.apply({"params": params}, view(batch["video"], batch["frame_mask"]),
                      frame_mask=batch["frame_mask"], train=False, return_attention=True)
    a = out["attention"].astype(jnp.float32).mean(axis=(1, 2))  # (B, T, G, G)
    res = {"maps": a.reshape(a.shape[0], a.shape[1], -1)}
    for k in ("video_index", "start", "frame_mask", "batch_valid"):
      res[k] = batch[k]
    return res

  return jax.jit(step, in_shardings=(trainer.state_shardings.params, trainer.batch_sharding),
                 out_shardings=sharding.replicated(trainer.mesh))


def frame_maps(trainer: train.Trainer, params, index, cfg, step=None
               ) -> dict[str, np.ndarray]:
  """{video_id: (num_frames, G, G)}: each frame's map, averaged over the windows.
  `step`: an `attention_step(trainer)` already built. With `dataset.frame_step` k the
  sampled frames' maps are interpolated to every native frame, as scores are."""
  return frame_maps_and_levels(trainer, params, index, cfg, step)[0]


def frame_maps_and_levels(trainer: train.Trainer, params, index, cfg, step=None
                          ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """`frame_maps`, and {video_id: (num_frames,)} each frame's uniform level averaged as
  its map is: 1 / (n * G * G) in a window of n real frames (the attention's mass spreads
  over those frames' regions; a video shorter than the window has n < T)."""
  step = step or attention_step(trainer)
  index = predict.dataset_view(index, cfg)
  averager = pipeline.ScoreAverager(index)
  g = int(trainer.model.config.num_regions)
  for batch in predict.eval_batches(trainer, index, cfg):
    out = jax.device_get(step(params, batch))
    mask = np.asarray(out["frame_mask"], np.float64)
    level = 1.0 / (np.maximum(mask.sum(1, keepdims=True), 1.0) * g * g)  # (B, 1)
    averager.add(out, np.concatenate(
        [out["maps"], np.broadcast_to(level[:, :, None], mask.shape + (1,))], -1))
  maps, levels = {}, {}
  for vi, m in averager.result().items():
    vid = index.info(vi).video_id
    maps[vid] = m[:, :-1].reshape(len(m), g, g).astype(np.float32)
    levels[vid] = m[:, -1]
  return maps, levels


def frame_groups(info, margin: int) -> dict[str, np.ndarray]:
  """Frame indices of one video per group (GROUPS), from its labels."""
  n = info.num_frames
  near = np.zeros(n, bool)
  apexes = []
  iv = info.intervals
  for on, ap, off, kind in zip(iv["onset"], iv["apex"], iv["offset"], iv["type"]):
    near[max(0, on - margin):min(n, off + margin + 1)] = True
    if schema.EXPRESSION_TYPES[int(kind)] == "micro":
      apexes.append(int(ap) if ap >= 0 else (int(on) + int(off)) // 2)
  speaking = np.asarray(info.speaking)
  return {"ME apex": np.asarray(sorted(set(apexes)), np.int64),
          "speech only": np.flatnonzero((speaking == 1) & ~near),
          "idle": np.flatnonzero((speaking == 0) & ~near)}


def row_names(g: int) -> list[str]:
  if g == len(PAPER_ROWS):
    return [f"{i + 1}: {name}" for i, name in enumerate(PAPER_ROWS)]
  return [f"{i + 1}: {100 * i // g}-{100 * (i + 1) // g} % of the crop" for i in range(g)]


def summarise(maps: dict[str, np.ndarray], index, margin_seconds: float,
              window: int, levels: dict[str, np.ndarray] | None = None) -> dict:
  """Per group: frames, mean map, mass per row, peak over the uniform level. The margin
  is converted at each video's own fps. `index` and `maps` are in native frames. The
  uniform level is the group's mean of `levels` (`frame_maps_and_levels`), else that of
  full windows, 1 / (window * G * G)."""
  sums, counts, level_sums = {}, {k: 0 for k in GROUPS}, {k: 0.0 for k in GROUPS}
  for info in index.infos:
    if info.video_id not in maps:
      continue
    margin = int(round(margin_seconds * info.fps))
    for name, frames in frame_groups(info, margin).items():
      if len(frames):
        sums[name] = sums.get(name, 0) + maps[info.video_id][frames].sum(0)
        counts[name] += len(frames)
        if levels is not None:
          level_sums[name] += float(np.sum(levels[info.video_id][frames]))
  out = {}
  for name in GROUPS:
    if not counts[name]:
      out[name] = {"frames": 0}
      continue
    mean = sums[name].astype(np.float64) / counts[name]
    g = mean.shape[0]
    uniform = (level_sums[name] / counts[name] if levels is not None
               else 1.0 / (window * g * g))
    out[name] = {"frames": counts[name], "mean_map": mean.round(6).tolist(),
                 "row_mass": (mean.sum(1) / mean.sum()).round(4).tolist(),
                 "peak_over_uniform": round(float(mean.max() / uniform), 3)}
  return out


def figure(path: str, summary: dict, title: str) -> None:
  """The groups' mean maps side by side, one colour scale, rows named."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  shown = [n for n in GROUPS if summary[n]["frames"]]
  if not shown:
    raise AttentionError("no frame falls in any group (no labels in this split?)")
  maps = [np.asarray(summary[n]["mean_map"]) for n in shown]
  vmax = max(float(m.max()) for m in maps)
  g = maps[0].shape[0]
  fig, axes = plt.subplots(1, len(shown), figsize=(4.2 * len(shown) + 1.5, 4.2),
                           squeeze=False)
  for k, (ax, name, m) in enumerate(zip(axes[0], shown, maps)):
    im = ax.imshow(m, vmin=0.0, vmax=vmax, cmap="viridis")
    ax.set_title(f"{name} ({summary[name]['frames']} frames)\n"
                 f"peak {summary[name]['peak_over_uniform']:.2f}x uniform", fontsize=9)
    ax.set_xticks(range(g))
    ax.set_xticklabels([str(i + 1) for i in range(g)], fontsize=7)
    ax.set_yticks(range(g))
    ax.set_yticklabels(row_names(g) if k == 0 else [""] * g, fontsize=7)
  fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="attention per region")
  fig.suptitle(title, fontsize=10)
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)


def split_index(cfg: ml_collections.ConfigDict, workdir: str, split: str):
  """The videos of `split`: a LOSO fold's subjects (`loso.fold_subjects`; the config's
  split names are the corpus's, empty for CAS(ME)^2 and SAMM-LV), else the config's."""
  subjects = loso.fold_subjects(cfg, workdir, split)
  if subjects is not None:
    if not subjects:
      raise AttentionError(f"{workdir}: this fold has no {split} subjects")
    train.say(f"[attention] {split} split of the fold: subject(s) {subjects}")
    return loso.open_subjects(cfg, subjects)
  splits = train.open_splits(cfg)
  index = {"test": splits.test, "validation": splits.val, "train": splits.train}.get(split)
  if index is None:
    raise AttentionError(f"{cfg.dataset.name} has no {split!r} split")
  return index


def run(cfg: ml_collections.ConfigDict, workdir: str, out: str, *, split: str = "test",
        index=None, max_videos: int = 0, margin_seconds: float = 0.5) -> dict:
  """Maps for a split (or `index`); writes OUT/attention.{npz,png,json}; returns the
  summary."""
  # Before any work: an --out file failed after all the maps (FileExistsError's traceback),
  # a negative --max_videos read no video, a negative margin grouped frames inside MEs.
  bad = [f"--max_videos={max_videos}: must be >= 0"] if max_videos < 0 else []
  if not (math.isfinite(margin_seconds) and margin_seconds >= 0):
    bad.append(f"--margin_seconds={margin_seconds:g}: must be >= 0")
  if os.path.exists(out) and not os.path.isdir(out):
    bad.append(f"{out}: --out is a file, not a folder")
  if bad:
    raise AttentionError("; ".join(bad))
  if not os.path.isdir(workdir):
    raise AttentionError(f"{workdir}: no such workdir")
  if index is None:
    index = split_index(cfg, workdir, split)
  if max_videos:
    index = predict.subset(index, max_videos)
  index = index.with_frame_step(1)  # the maps and groups are in the corpus's frames
  cfg = spot.fit_mesh(cfg, "attention")
  trainer = train.make_trainer(cfg)
  attend = attention_step(trainer)  # no enhancer: fails before the checkpoint is read
  with jax.set_mesh(trainer.mesh):
    params, _, step = spot.restore(cfg, workdir, trainer, tag="attention")
    train.say(f"[attention] checkpoint step {step}: {len(index)} video(s) of the "
              f"{split} split...")
    maps, levels = frame_maps_and_levels(trainer, params, index, cfg, attend)
  summary = summarise(maps, index, margin_seconds, int(cfg.dataset.window), levels)
  if not any(summary[n]["frames"] for n in GROUPS):
    raise AttentionError(f"no frame of the {split} split falls in any group (no labels?); "
                         "nothing written")
  if jax.process_index() == 0:  # every process has all the maps; one writes them
    with checkpointing.staged_folder(out) as tmp:  # all three files or none
      predict.write_scores(os.path.join(tmp, "attention.npz"), maps)
      figure(os.path.join(tmp, "attention.png"), summary,
             f"enhancer attention, {cfg.dataset.name} {split}, checkpoint step {step}")
      checkpointing.write_json(os.path.join(tmp, "attention.json"),
                               {"checkpoint_step": step, "split": split, "groups": summary,
                                "margin_seconds": margin_seconds, "rows": row_names(
                                    int(trainer.model.config.num_regions))})
  for name in GROUPS:
    s = summary[name]
    if s["frames"]:
      train.say(f"[attention] {name}: {s['frames']} frames, peak "
                f"{s['peak_over_uniform']:.2f}x uniform")
  train.say(f"[attention] wrote {os.path.join(out, 'attention.png')}, attention.npz, "
            "attention.json")
  return summary


def _define_flags() -> None:
  """Defined when run as a command, not on import."""
  config_flags.DEFINE_config_file(
      "config", None, "The run's config file (default: WORKDIR/config.json).",
      lock_config=True)
  flags.DEFINE_string("workdir", None, "The trained run's workdir.")
  flags.DEFINE_string("out", None, "Where attention.{npz,png,json} go.")
  flags.DEFINE_enum("split", "test", ["test", "validation", "train"], "Which split.")
  flags.DEFINE_integer("max_videos", 0, "At most this many videos (0: all).")
  flags.DEFINE_float("margin_seconds", 0.5, "Speech-only and idle frames are at least "
                     "this far from any annotated expression.")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cli.quiet_logs()
  f = flags.FLAGS
  # The training commands' table too: a record breaking the schema was a traceback here.
  with cli.one_line_errors(cli.EXIT_CODES + ((AttentionError, 2), (spot.SpotError, 2),
                                             (loso.FoldError, 2))):
    run(spot.load_config(f.workdir, f.config), f.workdir, f.out, split=f.split,
        max_videos=f.max_videos, margin_seconds=f.margin_seconds)


if __name__ == "__main__":
  _define_flags()
  flags.mark_flags_as_required(["workdir", "out"])
  app.run(main)
