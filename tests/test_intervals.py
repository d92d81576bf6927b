"""Frame-score decoding: IoU, window layout, overlap averaging, threshold/merge/filters."""
import numpy as np
import pytest

from meldae_jax import intervals


@pytest.mark.parametrize("a, b, expected", [
    ((0, 9), (0, 4), 0.5),        # inter 5, union 10
    ((0, 9), (0, 3), 0.4),        # inter 4, union 10
    ((0, 9), (5, 14), 1 / 3),     # inter 5, union 15
    ((0, 4), (5, 9), 0.0),        # adjacent, no shared frame
    ((3, 3), (3, 3), 1.0),        # single frame, inclusive
    ((2, 11), (0, 9), 8 / 12),    # inter [2, 9] = 8, union 12
])
def test_iou_inclusive(a, b, expected):
  assert intervals.iou(a, b) == pytest.approx(expected)
  assert intervals.iou(b, a) == pytest.approx(expected)


def test_iou_exact_half_reaches_threshold():
  assert intervals.iou((0, 9), (0, 4)) >= 0.5
  assert intervals.iou((10, 29), (10, 19)) >= 0.5   # inter 10, union 20


@pytest.mark.parametrize("n, window, stride, expected", [
    (10, 4, 3, [0, 3, 6]),        # strided windows end exactly at the last frame
    (10, 4, 4, [0, 4, 6]),        # last window aligned to the end
    (3, 4, 2, [0]),               # shorter than a window: one padded window
    (4, 4, 1, [0]),
    (9, 3, 1, [0, 1, 2, 3, 4, 5, 6]),
])
def test_window_starts(n, window, stride, expected):
  starts = intervals.window_starts(n, window, stride)
  assert starts == expected
  covered = {s + t for s in starts for t in range(window)}
  assert set(range(n)) <= covered
  if n >= window:
    assert max(starts) + window == n


def test_aggregate_windows_averages_overlaps():
  # Window 0 covers frames 0-3 with 1.0, window 1 covers 2-5 with 0.0:
  # frames 0,1 -> 1; 2,3 -> (1 + 0) / 2; 4,5 -> 0.
  scores = np.array([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
  out = intervals.aggregate_windows(6, [0, 2], scores)
  np.testing.assert_allclose(out, [1, 1, 0.5, 0.5, 0, 0])
  both = intervals.aggregate_windows(6, [0, 2], np.stack([scores, 1 - scores], -1))
  assert both.shape == (6, 2)
  np.testing.assert_allclose(both[:, 1], [0, 0, 0.5, 0.5, 1, 1])


def test_aggregate_windows_masks_and_gaps():
  scores = np.array([[0.2, 0.4, 0.6, 0.8], [0.9, 0.9, 0.3, 0.3]])
  masks = np.array([[1, 1, 1, 1], [1, 1, 0, 0]])
  # Window 1's masked frames (4, 5) do not vote, so they are covered by nothing.
  with pytest.raises(ValueError, match="2 of 6 frames"):
    intervals.aggregate_windows(6, [0, 2], scores, masks)
  out = intervals.aggregate_windows(6, [0, 2], scores, masks, allow_gaps=True)
  np.testing.assert_allclose(out, [0.2, 0.4, 0.75, 0.85, 0, 0], rtol=1e-6)


def test_aggregate_windows_ignores_overhang():
  out = intervals.aggregate_windows(3, [0], np.array([[0.2, 0.4, 0.6, 0.8]]))
  np.testing.assert_allclose(out, [0.2, 0.4, 0.6], rtol=1e-6)


SCORES = [0, .6, .7, 0, .8, 0, 0, .9, .9, .9]   # runs at >= .5: [1,2], [4,4], [7,9]


def _spans(found):
  return [(iv["onset"], iv["offset"]) for iv in found]


def test_decode_runs():
  found = intervals.decode(SCORES, 0.5)
  assert _spans(found) == [(1, 2), (4, 4), (7, 9)]
  assert found[0]["score"] == pytest.approx(0.65)
  assert found[2]["score"] == pytest.approx(0.9)


def test_decode_threshold_is_inclusive():
  assert _spans(intervals.decode([0.5, 0.49, 0.5], 0.5)) == [(0, 0), (2, 2)]
  assert _spans(intervals.decode([1, 1, 1], 0.5)) == [(0, 2)]
  assert intervals.decode([0, 0], 0.5) == []


def test_decode_merge_gap():
  # Gap between [1,2] and [4,4] is one frame (3); between [4,4] and [7,9] two frames.
  found = intervals.decode(SCORES, 0.5, merge_gap=1)
  assert _spans(found) == [(1, 4), (7, 9)]
  assert found[0]["score"] == pytest.approx((0.6 + 0.7 + 0 + 0.8) / 4)
  assert _spans(intervals.decode(SCORES, 0.5, merge_gap=2)) == [(1, 9)]


def test_decode_length_filters():
  assert _spans(intervals.decode(SCORES, 0.5, min_len=2)) == [(1, 2), (7, 9)]
  assert _spans(intervals.decode(SCORES, 0.5, max_len=2)) == [(1, 2), (4, 4)]
  # Filters apply after merging: [1,4] (4 frames) survives min_len=4.
  assert _spans(intervals.decode(SCORES, 0.5, merge_gap=1, min_len=4)) == [(1, 4)]


@pytest.mark.parametrize("seconds, fps, frames", [
    (0.5, 30, 15), (0.5, 25, 13), (0.5, 200, 100), (0.01, 30, 1)])
def test_seconds_to_frames(seconds, fps, frames):
  assert intervals.seconds_to_frames(seconds, fps) == frames


def test_decode_video_per_class_settings():
  scores = np.zeros((20, 2))
  scores[2:8, 0] = 0.9     # 6 frames of micro: longer than 0.5 s at 10 fps (5 frames)
  scores[2:8, 1] = 0.9     # the same 6 frames of macro: kept
  scores[12:14, 0] = 0.6   # 2 frames of micro, below the macro threshold anyway
  found = intervals.decode_video(scores, ("micro", "macro"), 10.0,
                                 {"micro": 0.5, "macro": 0.7},
                                 max_seconds=intervals.DEFAULT_MAX_SECONDS)
  assert [(iv["onset"], iv["offset"], iv["type"]) for iv in found] == [
      (2, 7, "macro"), (12, 13, "micro")]
  assert found[1]["score"] == pytest.approx(0.6)


@pytest.mark.parametrize("max_seconds", [0, {"micro": 0}, None])
def test_decode_video_max_seconds_0_is_no_limit(max_seconds):
  found = intervals.decode_video(np.full(20, 0.9), ("micro",), 30.0, 0.5,
                                 max_seconds=max_seconds)
  assert [(iv["onset"], iv["offset"]) for iv in found] == [(0, 19)]


@pytest.mark.parametrize("fps, kept", [(25.0, True), (30.0, True), (60.0, False)])
def test_decode_video_min_seconds_at_the_videos_fps(fps, kept):
  # A 4-frame run against min_seconds = 0.1: 3 frames at 25 fps, 3 at 30, 6 at 60.
  scores = np.zeros((30, 1))
  scores[10:14] = 0.9
  found = intervals.decode_video(scores, ("micro",), fps, 0.5, min_seconds=0.1)
  assert [(iv["onset"], iv["offset"]) for iv in found] == ([(10, 13)] if kept else [])
  # min_seconds overrides min_len; 0 or None leaves min_len.
  assert intervals.decode_video(scores, ("micro",), fps, 0.5, min_len=5,
                                min_seconds=0.0) == []


def test_decode_video_sorted_by_onset_then_class():
  scores = np.zeros((10, 2))
  scores[3:5, :] = 1.0
  scores[0:2, 1] = 1.0
  found = intervals.decode_video(scores, ("micro", "macro"), 30.0, 0.5)
  assert [(iv["onset"], iv["type"]) for iv in found] == [
      (0, "macro"), (3, "micro"), (3, "macro")]


def test_decode_video_rejects_wrong_width():
  with pytest.raises(ValueError):
    intervals.decode_video(np.zeros((5, 2)), ("micro",), 30.0, 0.5)


def test_decode_video_smoothing_joins_an_apex_dip():
  # A motion score that fires on an expression's rise and fall but dips at its apex.
  s = np.zeros(40)
  s[10:14] = 0.9
  s[14:17] = 0.1
  s[17:21] = 0.9
  raw = intervals.decode_video(s, ("micro",), 30.0, 0.5)
  assert [(iv["onset"], iv["offset"]) for iv in raw] == [(10, 13), (17, 20)]
  smooth = intervals.decode_video(s, ("micro",), 30.0, 0.5, smooth_seconds=0.1)
  assert len(smooth) == 1
  assert smooth[0]["onset"] <= 13 and smooth[0]["offset"] >= 17  # spans the dip
  # Sigma is in seconds: the same track at 300 fps is barely smoothed (3 frames -> 0.3).
  assert len(intervals.decode_video(s, ("micro",), 300.0, 0.5, smooth_seconds=0.001)) == 2


@pytest.mark.parametrize("fps, merged", [(30.0, False), (60.0, True)])
def test_decode_video_merge_seconds_at_the_videos_fps(fps, merged):
  # Two runs 4 frames apart against merge_seconds = 0.1: 3 frames at 30 fps, 6 at 60...
  s = np.zeros(40)
  s[10:14] = 0.9
  s[18:22] = 0.9
  found = intervals.decode_video(s, ("micro",), fps, 0.5, merge_seconds=0.1)
  assert len(found) == (1 if merged else 2)
  # ...and merge_seconds overrides merge_gap (in frames); 0 or None leaves it.
  assert len(intervals.decode_video(s, ("micro",), fps, 0.5, merge_gap=4,
                                    merge_seconds=0.0)) == 1


def test_decode_kwargs_merge_in_seconds_and_a_saved_runs_frames():
  import ml_collections
  from configs import common
  from meldae_jax import predict
  cfg = ml_collections.ConfigDict({"eval": {"merge_seconds": 0.133}})
  assert predict.decode_kwargs(cfg)["merge_seconds"] == pytest.approx(0.133)
  # The configs give merge lengths in seconds, like every other decoding length.
  assert "merge_gap" not in common.base_config().eval
  saved = ml_collections.ConfigDict({"eval": {"merge_gap": 3}})  # config.json before it
  kw = predict.decode_kwargs(saved)
  assert (kw["merge_gap"], kw["merge_seconds"]) == (3, None)
  with pytest.raises(ValueError, match="merge_seconds"):
    predict.decode_kwargs(ml_collections.ConfigDict(
        {"eval": {"merge_gap": 3, "merge_seconds": 0.1}}))


def test_decode_kwargs_per_class_seconds_as_config_check_allows():
  # config_check takes {class: seconds} for every eval.*_seconds; a config.json read back
  # gives a ConfigDict. decode_kwargs raised TypeError on float(ConfigDict) for
  # merge/min_seconds, and left smooth_seconds a ConfigDict that for_class took whole.
  import ml_collections
  from meldae_jax import config_check
  from meldae_jax import predict
  cfg = ml_collections.ConfigDict({"eval": {
      "merge_seconds": {"micro": 0.1}, "min_seconds": {"macro": 0.4},
      "max_seconds": {"micro": 0.5}, "smooth_seconds": {"macro": 0.1}}})
  assert not [m for m in config_check.problems(cfg) if "_seconds" in m]
  kw = predict.decode_kwargs(cfg)
  assert kw["merge_seconds"] == {"micro": 0.1} and kw["smooth_seconds"] == {"macro": 0.1}
  scores = np.zeros((40, 2))
  scores[[2, 3, 5, 6], 0] = 1     # micro: a 1-frame gap merged at 0.1 s x 25 fps
  scores[20:25, 1] = 1            # macro: 5 frames < 0.4 s x 25 fps = 10: dropped
  found = intervals.decode_video(scores, ("micro", "macro"), 25.0, 0.5, **kw)
  assert [(d["onset"], d["offset"], d["type"]) for d in found] == [(2, 6, "micro")]
  assert predict.decode_kwargs(ml_collections.ConfigDict(
      {"eval": {"min_seconds": 0.0, "smooth_seconds": 0}}))["smooth_seconds"] is None
