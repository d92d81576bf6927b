"""SPEC §5 metrics and decoding against small independent references written from the
SPEC's wording (exact fractions, brute-force loops), on random inputs, plus properties:
video order does not matter, and per-video results pooled by counts equal the joint one."""
from fractions import Fraction
import random

import numpy as np
import pytest

from meldae_jax import intervals
from meldae_jax import metrics

TYPES = ("micro", "macro")


def _ref_iou(a, b):
  inter = max(0, min(a[1], b[1]) - max(a[0], b[0]) + 1)
  return Fraction(inter, (a[1] - a[0] + 1) + (b[1] - b[0] + 1) - inter)


def _ref_match(gt, pred, thr):
  """Repeatedly takes the best free pair: IoU desc, earlier GT onset, earlier pred onset."""
  free_g, free_p, out = set(range(len(gt))), set(range(len(pred))), []
  while True:
    cands = [(-_ref_iou(gt[g], pred[p]), gt[g][0], pred[p][0], g, p)
             for g in free_g for p in free_p if _ref_iou(gt[g], pred[p]) >= thr]
    if not cands:
      return out
    _, _, _, g, p = min(cands)
    free_g.discard(g)
    free_p.discard(p)
    out.append((g, p))


def _ref_state(speaking, on, off):
  if speaking is None:
    return None
  known = [s for s in speaking[on:off + 1] if s != -1]
  if not known:
    return None
  return "speaking" if 2 * sum(known) >= len(known) else "listening"


def _ratio(a, b):
  return None if b == 0 else Fraction(a, b)


def _ref_evaluate(videos, preds, thr=Fraction(1, 2)):
  """videos: {id: (num_frames, [(on, off, type)], speaking|None)}; preds: {id: [...]}."""
  per = {c: [0, 0, 0] for c in TYPES}
  states = {s: [0, 0, 0] for s in ("speaking", "listening")}
  found = n_gt = n_pred = 0
  for vid, (_, gts, speaking) in videos.items():
    for c in TYPES:
      g = [iv for iv in gts if iv[2] == c]
      p = [iv for iv in preds.get(vid, []) if iv[2] == c]
      pairs = _ref_match(g, p, thr)
      per[c][0] += len(pairs)
      per[c][1] += len(p) - len(pairs)
      per[c][2] += len(g) - len(pairs)
      mg, mp = {a for a, _ in pairs}, {b for _, b in pairs}
      for i, iv in enumerate(g):
        s = _ref_state(speaking, iv[0], iv[1])
        if s:
          states[s][0 if i in mg else 2] += 1
      for i, iv in enumerate(p):
        s = _ref_state(speaking, iv[0], iv[1])
        if s and i not in mp:
          states[s][1] += 1
      found += sum(1 for gi in g if any(_ref_iou(gi, pi) >= thr for pi in p))
      n_gt += len(g)
      n_pred += len(p)

  def prf(tp, fp, fn):
    return dict(tp=tp, fp=fp, fn=fn, precision=_ratio(tp, tp + fp),
                recall=_ratio(tp, tp + fn), f1=_ratio(2 * tp, 2 * tp + fp + fn))

  tot = [sum(v[i] for v in per.values()) for i in range(3)]
  out = prf(*tot)
  out["per_class"] = {c: prf(*v) for c, v in per.items() if any(v)}
  f1s = [out["per_class"][c]["f1"] for c in TYPES if per[c][0] + per[c][2] > 0]
  out["uf1"] = sum(f1s) / len(f1s) if f1s else None
  fs, fl = prf(*states["speaking"])["f1"], prf(*states["listening"])["f1"]
  out["f1_speaking"], out["f1_listening"] = fs, fl
  if fs == 0 or fl == 0:
    out["f1_dr"] = 0
  elif fs is None or fl is None:
    out["f1_dr"] = None
  else:
    out["f1_dr"] = 2 * fs * fl / (fs + fl)
  out["megc2020"] = dict(found=found, precision=_ratio(found, n_pred),
                         recall=_ratio(found, n_gt), f1=_ratio(2 * found, n_gt + n_pred))
  return out


def _random_case(rng, num_videos=4):
  videos, preds = {}, {}
  for v in range(num_videos):
    n = rng.randint(5, 60)

    def ivs(count):
      out = []
      for _ in range(count):
        on = rng.randrange(n)
        out.append((on, min(n - 1, on + rng.randint(0, 12)), rng.choice(TYPES)))
      return out
    gts = ivs(rng.randint(0, 4))
    # Predictions near the GTs, so that matches and ties happen often.
    near = []
    for on, off, t in gts:
      a = min(max(0, on + rng.randint(-2, 2)), n - 1)
      near.append((a, min(max(a, off + rng.randint(-2, 2)), n - 1), t))
    ps = [iv for iv in near if rng.random() < 0.8] + ivs(rng.randint(0, 3))
    ps += rng.sample(ps, min(len(ps), rng.randint(0, 1)))       # a duplicate now and then
    speaking = None if rng.random() < 0.2 else [rng.choice((-1, 0, 1, 1, 0))
                                                for _ in range(n)]
    videos[f"v{v}"] = (n, gts, speaking)
    if rng.random() < 0.9:                     # a video absent from P.json: no predictions
      preds[f"v{v}"] = ps
  return videos, preds


def _json(videos, preds, order=None):
  order = order or list(videos)
  ann = {"videos": {}}
  for vid in order:
    n, gts, speaking = videos[vid]
    ann["videos"][vid] = {"num_frames": n, "fps": 25.0, "intervals": [
        dict(onset=a, offset=b, type=t) for a, b, t in gts]}
    if speaking is not None:
      ann["videos"][vid]["speaking"] = speaking
  pred = {"videos": {vid: {"intervals": [dict(onset=a, offset=b, type=t, score=0.5)
                                         for a, b, t in preds[vid]]}
                     for vid in order if vid in preds}}
  return ann, pred


def _close(got, want, where):
  if want is None or got is None:
    assert got is None and want is None, where
  else:
    assert got == pytest.approx(float(want), abs=1e-12), where


def _compare(got, want):
  for key in ("tp", "fp", "fn", "precision", "recall", "f1", "uf1", "f1_speaking",
              "f1_listening", "f1_dr"):
    _close(got[key], want[key], key)
  for c, v in want["per_class"].items():
    for key, x in v.items():
      _close(got["per_class"][c][key], x, f"{c}.{key}")
  for key, x in want["megc2020"].items():
    _close(got["megc2020"][key], x, f"megc2020.{key}")


@pytest.mark.parametrize("seed", range(40))
def test_evaluate_matches_reference(seed):
  rng = random.Random(seed)
  videos, preds = _random_case(rng)
  got = metrics.evaluate(*_json(videos, preds))
  _compare(got, _ref_evaluate(videos, preds))


@pytest.mark.parametrize("seed", range(10))
def test_evaluate_matches_reference_at_another_iou(seed):
  rng = random.Random(100 + seed)
  videos, preds = _random_case(rng)
  got = metrics.evaluate(*_json(videos, preds), iou=0.3)
  _compare(got, _ref_evaluate(videos, preds, Fraction(3, 10)))


@pytest.mark.parametrize("seed", range(10))
def test_video_order_does_not_matter_and_pooling_per_video_is_joint(seed):
  rng = random.Random(200 + seed)
  videos, preds = _random_case(rng, num_videos=6)
  joint = metrics.evaluate(*_json(videos, preds))
  order = list(videos)
  rng.shuffle(order)
  shuffled = metrics.evaluate(*_json(videos, preds, order))
  single = [metrics.evaluate(*_json({v: videos[v]}, {v: preds[v]} if v in preds else {}))
            for v in order]
  pooled = metrics.pool_results(single)
  for other in (shuffled, pooled):
    for key in ("tp", "fp", "fn", "precision", "recall", "f1", "uf1", "f1_speaking",
                "f1_listening", "f1_dr", "speaking", "listening", "megc2020"):
      assert other[key] == pytest.approx(joint[key]), key
    assert {c: v for c, v in other["per_class"].items() if any(
        v[k] for k in ("tp", "fp", "fn"))} == joint["per_class"]


def _ref_decode(scores, thr, gap, lo, hi):
  runs, cur = [], None
  for t, s in enumerate(scores):
    if s >= thr:
      cur = [t, t] if cur is None else [cur[0], t]
    elif cur is not None:
      runs.append(cur)
      cur = None
  if cur is not None:
    runs.append(cur)
  merged = []
  for r in runs:
    if merged and r[0] - merged[-1][1] - 1 <= gap:   # frames strictly between the runs
      merged[-1][1] = r[1]
    else:
      merged.append(list(r))
  return [(a, b) for a, b in merged if lo <= b - a + 1 and (hi is None or b - a + 1 <= hi)]


@pytest.mark.parametrize("seed", range(30))
def test_windows_average_and_decode_match_reference(seed):
  rng = np.random.RandomState(seed)
  n, window = rng.randint(1, 80), rng.randint(1, 24)
  stride = rng.randint(1, window + 1)
  starts = intervals.window_starts(n, window, stride)
  # Every real frame in some window; none past the end unless the video is short.
  assert set(range(n)) <= {s + t for s in starts for t in range(window)}
  assert starts[0] == 0 and (n <= window or starts[-1] + window == n)
  scores = rng.rand(len(starts), window, 2)
  masks = np.array([[s + t < n for t in range(window)] for s in starts], np.float32)
  got = intervals.aggregate_windows(n, starts, scores, masks)
  want = np.zeros((n, 2))
  for f in range(n):
    votes = [scores[i, f - s] for i, s in enumerate(starts) if s <= f < s + window]
    want[f] = np.mean(votes, axis=0)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  thr, gap = rng.choice([0.3, 0.5, 0.7]), rng.randint(0, 4)
  lo, hi = rng.randint(1, 4), [None, 6][rng.randint(2)]
  dec = intervals.decode(got[:, 0], thr, merge_gap=gap, min_len=lo, max_len=hi)
  assert [(d["onset"], d["offset"]) for d in dec] == _ref_decode(
      got[:, 0].tolist(), thr, gap, lo, hi)
  for d in dec:
    assert d["score"] == pytest.approx(float(np.mean(got[d["onset"]:d["offset"] + 1, 0])))


def test_decode_video_lengths_in_seconds():
  # 0.2 s at 25 fps = 5 frames: a 5-frame run stays, a 4-frame one goes; 0.1 s merges a
  # 2-frame gap (round(2.5) = 3 frames, half up) and not a 4-frame one.
  s = np.zeros(60)
  s[2:7] = 1      # 5 frames
  s[11:15] = 1    # 4 frames, 4 frames after [2, 6]
  s[20:23] = 1
  s[25:28] = 1    # gap of 2 after [20, 22]
  s[32:35] = 1    # gap of 4 after [25, 27]
  got = intervals.decode_video(s, ("micro",), 25.0, 0.5, min_seconds=0.2,
                               merge_seconds=0.1)
  assert [(d["onset"], d["offset"]) for d in got] == [(2, 6), (20, 27)]
