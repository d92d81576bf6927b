"""Where a model's errors fall on a synthetic test split: by ME action, speaking state,
skin tone, the nuisance motion under each false positive, and whether a miss was
mislocalised (a prediction overlaps it with IoU < 0.5) or unseen.

The synthetic corpus is a pure function of its seeds, so every test video's timeline
(what each ME was, which channels moved when) can be replayed without its pixels:

  python -m meldae_jax.data.synthetic.error_report --workdir=/tmp/easy --level=easy

reads `WORKDIR/test_predictions.json` (written by training's final evaluation) and prints
recall per group and the false-positive causes. Matching is SPEC §5's IoU >= 0.5, one-to-one.

Output (`--json` gives the same as an object):
  recall           tp / n per group of test MEs: `action=<ME action>`, `speaking=1|0` (the
                   ME's turn), `skin=dark|light` (skin luma < 100: the 2 darkest of the 8
                   tones, the third in part), `all` (its tp is evaluate's micro tp).
  misses           missed MEs `mislocalised` (a prediction overlaps, IoU < 0.5) or `unseen`.
  false_positives  `by_state`: SPEC §5's majority state of each unmatched prediction (as
                   evaluate's f1_speaking/f1_listening count them); `by_cause`: the nuisance
                   channel that swings most under it (jaw, speech-emphasis brow, blink, nod,
                   lip shape), `macro-expression` over a macro, or `none` when none of
                   these swings by a tenth of its full swing (head drift, saccades and light
                   are not causes here); `on_an_me`: how many overlap an ME.
"""
import argparse
import collections
import json
import os
import sys

import numpy as np

from meldae_jax import intervals
from meldae_jax import metrics
from meldae_jax.data import build as build_lib
from meldae_jax.data.synthetic import generator

DARK_LUMINANCE = 100.0  # skin luminance (Rec. 601 luma) below which a face counts as dark
# Nuisance channels that can pass for an ME, and the swing (over the prediction +-5
# frames) that counts as "fully present": the largest ratio names the cause. The swings
# are read from the video's timeline without its MEs (an ME's own motion is no nuisance),
# a false positive over a macro-expression is counted as such, and one where no channel
# swings by a tenth of "fully present" as "none".
_CAUSES = {"jaw": ("jaw", 0.5), "brow (speech emphasis)": ("brow_raise_l", 2.0),
           "blink": ("lid_close_l", 0.5), "nod": ("head_pitch", 1.0), "lip shape": ("lip_up_l", 1.5)}
_MACRO, _NONE, _LEAST = "macro-expression", "none (no nuisance motion)", 0.1


def fp_cause(nuisance, macros, onset: int, offset: int) -> str:
  """The cause of a false positive at [onset, offset]: `nuisance` is the video's timeline
  without its MEs, `macros` its macro events."""
  lo, hi = max(0, onset - 5), min(nuisance.num_frames, offset + 6)
  if any(m.onset < hi and m.offset >= lo for m in macros):
    return _MACRO
  swing = {name: np.ptp(nuisance.controls[ch][lo:hi]) / full
           for name, (ch, full) in _CAUSES.items()}
  best = max(swing, key=swing.get)
  return best if swing[best] >= _LEAST else _NONE


def builder_config(level: str):
  cls = build_lib.load_builder_class("synthetic_conversation")
  for c in cls.BUILDER_CONFIGS:
    if c.name == level:
      return c
  raise SystemExit(f"error: no synthetic_conversation level {level!r} "
                   f"(have {[c.name for c in cls.BUILDER_CONFIGS]})")


def skin_luminance(subject_seed: int) -> float:
  skin = generator.subject_face(subject_seed).skin
  return float(np.dot(skin, [0.299, 0.587, 0.114]))


def report(predictions: dict, level: str, split: str = "test",
           annotations: dict | None = None) -> dict:
  """Recall per group, misses by kind and false-positive causes; `predictions` (and the
  run's `annotations`, to check that the replayed level is the run's) in SPEC §5's
  format."""
  c = builder_config(level)
  plan = [s for s in generator.corpus_plan(c.num_subjects, videos_per_subject=c.videos_per_subject,
                                           seconds=c.seconds, fps=c.fps,
                                           corpus_seed=c.corpus_seed) if s.split == split]
  recall = collections.defaultdict(lambda: [0, 0])
  causes = collections.Counter()
  fp_state = collections.Counter()
  misses = collections.Counter()  # a missed ME: overlapped by a prediction, or not at all
  fp_on_me = 0
  videos = predictions.get("videos", {})
  strangers = sorted(set(videos) - {spec.video_id for spec in plan})
  if strangers:
    raise ValueError(f"predictions for {len(strangers)} video(s) that the {level!r} level's "
                     f"{split} split does not have (e.g. {strangers[0]!r}): another level?")
  for spec in plan:
    tl = generator.video_timeline(spec.seed, spec.num_frames, c.fps, c.difficulty,
                                  c.me_period_s)
    nuisance = generator.video_timeline(spec.seed, spec.num_frames, c.fps, c.difficulty,
                                        c.me_period_s, without_micro=True)
    macros = [e for e in tl.events if e.kind == "macro"]
    mes = [e for e in tl.events if e.kind == "micro"]
    gts = [(e.onset, e.offset) for e in mes]
    given = ((annotations or {}).get("videos") or {}).get(spec.video_id)
    if given is not None and sorted(
        (iv["onset"], iv["offset"]) for iv in given.get("intervals", ())
        if iv.get("type", "micro") == "micro") != sorted(gts):
      raise ValueError(f"video {spec.video_id!r}: the run's annotations are not the "
                       f"{level!r} level's (replayed): another level?")
    predicted = videos.get(spec.video_id, {}).get("intervals", [])
    for i, (on, off) in enumerate((p["onset"], p["offset"]) for p in predicted):
      if not 0 <= on <= off < spec.num_frames:  # SPEC §5 (was counted, or a numpy error)
        raise ValueError(f"video {spec.video_id!r}: predicted interval {i} [{on}, {off}] "
                         f"is {'reversed' if on > off else 'outside'} [0, {spec.num_frames})")
    preds = [(p["onset"], p["offset"]) for p in predicted if p.get("type", "micro") == "micro"]
    pairs = metrics.match(gts, preds)  # SPEC §5: IoU >= 0.5, one-to-one
    hit, matched_preds = {g for g, _ in pairs}, {p for _, p in pairs}
    tone = "dark" if skin_luminance(spec.subject_seed) < DARK_LUMINANCE else "light"
    for i, e in enumerate(mes):
      for key in (f"action={e.action}", f"speaking={e.speaking}", f"skin={tone}", "all"):
        recall[key][0] += i in hit
        recall[key][1] += 1
      if i not in hit:
        near = any(intervals.iou((e.onset, e.offset), q) > 0 for q in preds)
        misses["mislocalised" if near else "unseen"] += 1
    for j, (on, off) in enumerate(preds):
      if j in matched_preds:
        continue
      fp_on_me += any(intervals.iou((on, off), g) > 0 for g in gts)
      fp_state[metrics.interval_state(tl.speaking, on, off) or "unknown"] += 1  # SPEC §5
      causes[fp_cause(nuisance, macros, on, off)] += 1
  return {"recall": {k: {"tp": v[0], "n": v[1], "recall": v[0] / v[1] if v[1] else None}
                     for k, v in sorted(recall.items())},
          "misses": {"mislocalised": misses["mislocalised"], "unseen": misses["unseen"]},
          "false_positives": {"by_state": dict(fp_state), "by_cause": dict(causes),
                              "on_an_me": fp_on_me}}


def _load(path: str):
  """A SPEC §5 JSON file (`{"videos": {...}}`); ValueError naming it if unreadable or not
  one (they were tracebacks)."""
  data = metrics.read_json(path)
  is_int = lambda x: isinstance(x, int) and not isinstance(x, bool)
  videos = data.get("videos") if isinstance(data, dict) else None
  if not isinstance(videos, dict) or not all(
      isinstance(v, dict) and isinstance(v.get("intervals", []), list) and all(
          isinstance(p, dict) and is_int(p.get("onset")) and is_int(p.get("offset"))
          for p in v.get("intervals", [])) for v in videos.values()):
    raise ValueError(f"{path}: expected {{\"videos\": {{id: {{\"intervals\": [{{\"onset\": "
                     "int, \"offset\": int, ...}]}}} (SPEC §5)")
  return data


def _workdir_level(workdir: str) -> str | None:
  """The synthetic level a workdir trained on (config.json's dataset), or None."""
  try:
    with open(os.path.join(workdir, "config.json")) as f:
      dataset = json.load(f).get("dataset") or {}
  except (OSError, ValueError):
    return None
  if dataset.get("name") != "synthetic_conversation":
    return None
  return dataset.get("builder_config") or builder_config_default()


def builder_config_default() -> str:
  return build_lib.load_builder_class("synthetic_conversation").BUILDER_CONFIGS[0].name


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", required=True, help="holds test_predictions.json")
  p.add_argument("--level", default=None, help="synthetic_conversation level (default: "
                 "the workdir's, from its config.json)")
  p.add_argument("--json", action="store_true", help="print JSON instead of a table")
  a = p.parse_args(argv)
  path = os.path.join(a.workdir, "test_predictions.json")
  if not os.path.exists(path):
    print(f"error: {path} not found (train with a test split first)", file=sys.stderr)
    return 2
  level = a.level or _workdir_level(a.workdir)
  if level is None:
    print(f"error: {a.workdir}/config.json names no synthetic_conversation level; give "
          "--level", file=sys.stderr)
    return 2
  try:
    predictions = _load(path)
    annotations = None
    if os.path.exists(os.path.join(a.workdir, "test_annotations.json")):
      annotations = _load(os.path.join(a.workdir, "test_annotations.json"))
    out = report(predictions, level, annotations=annotations)
  except (ValueError, SystemExit) as e:
    print(e if str(e).startswith("error:") else f"error: {e}", file=sys.stderr)
    return 2
  if a.json:
    print(json.dumps(out, indent=1))
    return 0
  for key, r in out["recall"].items():
    print(f"{key:32s} {r['tp']:4d} / {r['n']:4d}  recall {r['recall']:.2f}")
  m, fp = out["misses"], out["false_positives"]
  print(f"missed MEs: {m['mislocalised']} overlapped by a prediction with IoU < 0.5, "
        f"{m['unseen']} by none")
  print(f"false positives overlapping an ME: {fp['on_an_me']} "
        f"of {sum(fp['by_state'].values())}")
  print("false positives by state:", out["false_positives"]["by_state"])
  print("false positives by nuisance motion:", out["false_positives"]["by_cause"])
  return 0


if __name__ == "__main__":
  sys.exit(main())
