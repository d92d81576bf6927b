"""Tests of the grain window pipeline on tiny in-memory sources."""
import collections
import dataclasses
import json

import cv2
import numpy as np
import pytest

from meldae_jax.data import augment as augment_lib
from meldae_jax.data import pipeline
from meldae_jax.data import sources
from meldae_jax.data import windows as windows_lib

SIZE = 32


def _jpeg(img):
  return cv2.imencode(".png", img)[1].tobytes()  # lossless: exact pixel checks


def _record(num_frames, intervals, speaking=None, seed=0, video_id="v", subject="s"):
  rng = np.random.default_rng(seed)
  frames = [cv2.imencode(".jpg", rng.integers(0, 256, (SIZE, SIZE, 3), np.uint8))[1]
            .tobytes() for _ in range(num_frames)]
  on, off, ty = (list(x) for x in zip(*intervals)) if intervals else ([], [], [])
  if speaking is None:
    speaking = rng.integers(-1, 2, num_frames)
  return {
      "video_id": video_id.encode(), "subject": subject.encode(), "fps": np.float32(25),
      "frames": frames,
      "intervals": {"onset": np.array(on, np.int32), "apex": -np.ones(len(on), np.int32),
                    "offset": np.array(off, np.int32), "type": np.array(ty, np.int64)},
      "speaking": np.asarray(speaking, np.int8),
  }


@pytest.fixture(scope="module")
def source():
  return [
      _record(60, [(3, 8, 0), (10, 10, 0), (14, 30, 1), (40, 45, 0)], seed=1,
              video_id="a", subject="s1"),
      _record(11, [(2, 5, 1), (9, 10, 0)], seed=2, video_id="b", subject="s2"),
      _record(45, [(0, 44, 1), (20, 23, 0)], speaking=[-1] * 45, seed=3,
              video_id="c", subject="s1"),
  ]


def _reference(record, start, window, classes):
  """Labels straight from the definition, frame by frame."""
  n = len(record["frames"])
  iv = record["intervals"]
  ids = [("micro", "macro").index(c) for c in classes]
  labels = np.zeros((window, len(ids)), np.float32)
  boundary = np.zeros_like(labels)
  me = 0.0
  spk = np.full(window, -1, np.int8)
  for j in range(window):
    t = start + j
    if t >= n:
      continue
    spk[j] = record["speaking"][t]
    for on, off, ty in zip(iv["onset"], iv["offset"], iv["type"]):
      if on <= t <= off:
        me = 1.0 if ty == 0 else me
        if ty in ids:
          labels[j, ids.index(ty)] = 1
      if t in (on, off) and ty in ids:
        boundary[j, ids.index(ty)] = 1
  known = [s for s in spk if s >= 0]
  ones = sum(known)
  state = 1.0 if known and ones >= len(known) - ones else 0.0
  return labels, boundary, spk, me, state, float(bool(known))


def _check_batch(batch, source, window, classes):
  for b in range(len(batch["start"])):
    vi, st = int(batch["video_index"][b]), int(batch["start"][b])
    labels, boundary, spk, me, state, valid = _reference(source[vi], st, window, classes)
    np.testing.assert_array_equal(batch["labels"][b], labels)
    np.testing.assert_array_equal(batch["boundary"][b], boundary)
    np.testing.assert_array_equal(batch["speaking"][b], spk)
    assert batch["me_label"][b] == me
    assert batch["state_label"][b] == state
    assert batch["state_valid"][b] == valid
    n = min(window, len(source[vi]["frames"]) - st)
    np.testing.assert_array_equal(batch["frame_mask"][b], np.arange(window) < n)


@pytest.mark.parametrize("classes", [("micro",), ("micro", "macro")])
def test_train_batches_match_reference_labels(source, classes):
  it = pipeline.make_train_iterator(
      source, window=16, stride=3, batch_size=4, classes=classes, image_size=24, seed=0,
      shard_index=0, shard_count=1)
  for _ in range(6):
    batch = next(it)
    assert batch["video"].shape == (4, 16, 24, 24, 3)
    assert batch["video"].dtype == np.uint8
    assert batch["labels"].shape == (4, 16, len(classes))
    assert batch["speaking"].dtype == np.int8
    assert batch["video_index"].dtype == np.int32
    assert set(batch) == set(pipeline.BATCH_KEYS)
    _check_batch(batch, source, 16, classes)


def _iv(*rows):
  on, off, ty = (np.array(x) for x in zip(*rows))
  return {"onset": on, "offset": off, "type": ty}


@pytest.mark.parametrize("change, message", [
    (dict(intervals=_iv((6, 2, 0))), r"interval 0 \(onset 6, offset 2\) is not 0 <= onset"),
    (dict(intervals=_iv((3, 4, 0), (5, 8, 0))), r"interval 1 .* < 8 frames"),
    (dict(intervals=_iv((-5, 2, 0))), r"interval 0 \(onset -5"),
    (dict(intervals=_iv((1, 2, 7))), r"type 7, not an index of \('micro', 'macro'\)"),
    (dict(intervals={"onset": [1, 3], "offset": [2], "type": [0, 0]}), r"differ in length"),
    (dict(intervals=[{"onset": 1, "offset": 2, "type": 0}]), r"must be a dict"),
    (dict(speaking=[0] * 9), r"speaking has 9 values for 8 frames"),
    (dict(speaking=[0, 2] * 4), r"speaking values must be 1, 0 or -1, got \[2\]"),
    (dict(speaking=["x"] * 8), r"speaking holds a non-integer"),
    (dict(fps=0.0), r"fps must be a positive number"),
    (dict(fps=None), r"fps must be a positive number"),
])
def test_a_record_that_breaks_the_schema_is_an_error_naming_the_video(change, message):
  record = dict(_record(8, [(1, 2, 0)], video_id="vid7"), **change)
  with pytest.raises(sources.RecordError, match="video 'vid7': .*" + message):
    sources.VideoIndex([_record(8, [], video_id="ok"), record])


def test_a_record_without_frames_or_id_is_named_by_its_position():
  with pytest.raises(sources.RecordError, match="video record 1: no 'frames'"):
    sources.VideoIndex([_record(8, []), {"fps": 25.0}])


def test_an_empty_video_is_an_error_naming_it():
  # It gave all-padding training windows and stopped the first validation after training
  # ("num_frames 0 is not a positive integer" from the evaluation's annotations).
  with pytest.raises(sources.RecordError, match="video 'e': no frames"):
    sources.VideoIndex([_record(8, []), _record(0, [], video_id="e")])


def test_a_missing_apex_or_short_speaking_track_is_unknown():
  record = dict(_record(8, [], video_id="v"), speaking=[1, 0],
                intervals={"onset": [1], "offset": [2], "type": [0]})
  info = sources.video_info(record)
  np.testing.assert_array_equal(info.speaking, [1, 0, -1, -1, -1, -1, -1, -1])
  np.testing.assert_array_equal(info.intervals["apex"], [-1])


def test_window_labels_edge_cases():
  iv = {"onset": np.array([4, 9]), "offset": np.array([6, 12]), "type": np.array([0, 1])}
  # Window [5, 10): onset 4 is outside, offset 6 inside; macro onset 9 inside.
  out = windows_lib.window_labels(iv, np.zeros(20, np.int8), 20, 5, 5, ("micro", "macro"))
  np.testing.assert_array_equal(out["labels"][:, 0], [1, 1, 0, 0, 0])
  np.testing.assert_array_equal(out["boundary"][:, 0], [0, 1, 0, 0, 0])
  np.testing.assert_array_equal(out["labels"][:, 1], [0, 0, 0, 0, 1])
  np.testing.assert_array_equal(out["boundary"][:, 1], [0, 0, 0, 0, 1])
  assert out["me_label"] == 1
  # Window [7, 12) has only the macro: me_label 0 even with K=2.
  out = windows_lib.window_labels(iv, np.zeros(20, np.int8), 20, 7, 5, ("micro", "macro"))
  assert out["me_label"] == 0 and out["labels"][:, 0].sum() == 0
  # State: tie -> 1, majority 0 -> 0, all unknown -> invalid.
  tie = windows_lib.window_labels(iv, np.array([1, 0, -1, -1], np.int8), 4, 0, 4, ("micro",))
  assert (tie["state_label"], tie["state_valid"]) == (1, 1)
  low = windows_lib.window_labels(iv, np.array([1, 0, 0, -1], np.int8), 4, 0, 4, ("micro",))
  assert (low["state_label"], low["state_valid"]) == (0, 1)
  unk = windows_lib.window_labels(iv, np.array([-1] * 4, np.int8), 4, 0, 4, ("micro",))
  assert (unk["state_label"], unk["state_valid"]) == (0, 0)
  # Padding frames' speaking labels do not vote.
  pad = windows_lib.window_labels(iv, np.array([0, 0], np.int8), 2, 0, 6, ("micro",))
  assert (pad["state_label"], pad["state_valid"]) == (0, 1)


def test_short_video_is_padded(source):
  loader = pipeline.WindowLoader(sources.VideoIndex(source), 16, ("micro", "macro"), SIZE)
  w = loader((1, 0))  # video b has 11 frames
  np.testing.assert_array_equal(w["frame_mask"], np.arange(16) < 11)
  assert not w["video"][11:].any() and w["video"][:11].any()
  assert (w["speaking"][11:] == -1).all()
  assert not w["labels"][11:].any() and not w["boundary"][11:].any()
  assert w["boundary"][9, 0] == 1 and w["labels"][10, 0] == 1  # micro 9..20 clipped at 10
  # Decoded pixels are the stored frames, in RGB.
  first = cv2.cvtColor(cv2.imdecode(np.frombuffer(source[1]["frames"][0], np.uint8), 1),
                       cv2.COLOR_BGR2RGB)
  np.testing.assert_array_equal(w["video"][0], first)


def test_resize_to_image_size(source):
  loader = pipeline.WindowLoader(sources.VideoIndex(source), 8, ("micro",), 48)
  assert loader((0, 5))["video"].shape == (8, 48, 48, 3)


def _take(it, n):
  return [next(it) for _ in range(n)]


def _same(a, b):
  return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


def test_augmentation_keeps_label_alignment(source):
  kw = dict(window=12, stride=4, batch_size=3, classes=("micro", "macro"), image_size=SIZE,
            seed=5, shard_index=0, shard_count=1)
  plain = _take(pipeline.make_train_iterator(source, augment=False, **kw), 4)
  aug = _take(pipeline.make_train_iterator(source, augment=True, **kw), 4)
  for p, a in zip(plain, aug):
    for k in p:
      if k != "video":
        np.testing.assert_array_equal(p[k], a[k])
  assert any(not np.array_equal(p["video"], a["video"]) for p, a in zip(plain, aug))
  for a in aug:  # padding stays zero
    assert not a["video"][a["frame_mask"] == 0].any()


def test_augmentation_is_the_same_for_every_frame():
  img = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), np.uint8)
  rec = _record(20, [(2, 4, 0)])
  rec["frames"] = [_jpeg(img)] * 20  # identical frames stay identical after augmenting
  it = pipeline.make_train_iterator([rec], window=8, stride=2, batch_size=4,
                                    image_size=SIZE, seed=0, shard_index=0, shard_count=1)
  for batch in _take(it, 3):
    for w in batch["video"]:
      assert (w == w[:1]).all()
  # A pure flip is exactly the mirrored frame.
  flip_only = augment_lib.AugmentConfig(flip_prob=1.0, min_crop=1.0, brightness=0.0,
                                        contrast=0.0)
  index = sources.VideoIndex([rec])
  loader = pipeline.WindowLoader(index, 8, ("micro",), SIZE, flip_only)
  w = loader((0, 3), np.random.default_rng(0))
  np.testing.assert_array_equal(w["video"], np.broadcast_to(img[:, ::-1, ::-1], w["video"].shape))


def test_low_light_dims_the_window_and_adds_fresh_noise_per_frame():
  img = np.full((SIZE, SIZE, 3), 200, np.uint8)
  rec = _record(12, [(2, 4, 0)])
  rec["frames"] = [_jpeg(img)] * 12
  index = sources.VideoIndex([rec])
  plain_cfg = augment_lib.AugmentConfig(flip_prob=0.0, min_crop=1.0, brightness=0.0,
                                        contrast=0.0)
  dark_cfg = dataclasses.replace(plain_cfg, low_light_prob=1.0, low_light_min=0.3,
                                 low_light_noise=2.0)
  plain = pipeline.WindowLoader(index, 8, ("micro",), SIZE, plain_cfg)((0, 8),
                                                                        np.random.default_rng(1))
  aug = augment_lib.sample(np.random.default_rng(1), SIZE, SIZE, dark_cfg)
  assert 0.3 <= aug.low_light < 1.0 and aug.noise == 2.0
  dark = pipeline.WindowLoader(index, 8, ("micro",), SIZE, dark_cfg)((0, 8),
                                                                     np.random.default_rng(1))
  real = dark["frame_mask"] == 1
  assert real.sum() == 4 and not dark["video"][~real].any()  # padding stays zero
  v, p = dark["video"][real].astype(np.float32), plain["video"][real].astype(np.float32)
  np.testing.assert_allclose(v.mean(), p.mean() * aug.low_light, atol=1.0)
  assert 1.0 < (v - p * aug.low_light).std() < 3.0  # the added noise, ~2 grey levels
  assert not np.array_equal(v[0], v[1])  # drawn anew per frame
  np.testing.assert_array_equal(plain["labels"], dark["labels"])
  with pytest.raises(ValueError, match="low_light_min"):
    augment_lib.as_config({"low_light_min": 1.5})


def test_determinism(source):
  kw = dict(window=10, stride=3, batch_size=4, image_size=SIZE, shard_index=0, shard_count=1)
  a = _take(pipeline.make_train_iterator(source, seed=1, **kw), 5)
  b = _take(pipeline.make_train_iterator(source, seed=1, **kw), 5)
  c = _take(pipeline.make_train_iterator(source, seed=2, **kw), 5)
  assert _same(a, b)
  assert not _same(a, c)


def _epoch_windows(source, **kw):
  it = pipeline.make_train_iterator(source, window=10, stride=3, batch_size=4, num_epochs=1,
                                    drop_remainder=False, augment=False, image_size=SIZE,
                                    seed=3, **kw)
  return [(int(v), int(s)) for b in it for v, s in zip(b["video_index"], b["start"])]


def test_sharding_is_disjoint_and_covers_the_epoch(source):
  table = [tuple(r) for r in pipeline.train_windows(sources.VideoIndex(source), 10, 3).tolist()]
  assert len(set(table)) == len(table)
  full = _epoch_windows(source, shard_index=0, shard_count=1)
  assert sorted(full) == sorted(table)
  s0 = _epoch_windows(source, shard_index=0, shard_count=2)
  s1 = _epoch_windows(source, shard_index=1, shard_count=2)
  assert len(s0) == len(s1) == len(table) // 2
  assert not set(s0) & set(s1)
  assert set(s0) | set(s1) <= set(table)


def test_each_process_draws_its_own_augmentation(source):
  """Every frame the same image: the augmented pixels then show only the draws, which
  must differ between the processes' i-th windows (they did not, with one seed)."""
  img = (np.add.outer(np.arange(SIZE) * 7, np.arange(SIZE) * 3) % 256).astype(np.uint8)
  png = _jpeg(np.stack([img, img[::-1], img.T], -1))
  same = [dict(r, frames=[png] * len(r["frames"])) for r in source]
  kw = dict(window=8, stride=4, batch_size=4, image_size=24, seed=0, num_threads=0,
            augment=augment_lib.AugmentConfig(low_light_prob=0.5), shard_count=2)
  b0, b1 = (next(pipeline.make_train_iterator(same, shard_index=i, **kw)) for i in (0, 1))
  assert not any(np.array_equal(b0["video"][r], b1["video"][r]) for r in range(4))
  assert not np.array_equal(b0["video"][0], b0["video"][1])


@pytest.mark.parametrize("field, value", [("flip_prob", 2.0), ("min_crop", 0.0),
                                          ("min_crop", -1.0), ("brightness", -0.1),
                                          ("contrast", 1.5)])
def test_augment_ranges_out_of_bounds_are_errors(field, value):
  with pytest.raises(ValueError, match=f"augment {field} must be in"):
    augment_lib.as_config({field: value})


def test_an_eval_stride_past_the_window_is_an_error():
  with pytest.raises(ValueError, match="stride 31 must be in \\[1, window 30\\]"):
    windows_lib.eval_starts(100, 30, 31)
  assert windows_lib.eval_starts(100, 30, 30).tolist() == [0, 30, 60, 70]


def test_second_epoch_is_reshuffled(source):
  it = pipeline.make_train_iterator(source, window=10, stride=3, batch_size=1, num_epochs=2,
                                    augment=False, image_size=8, seed=0, shard_index=0,
                                    shard_count=1)
  order = [(int(b["video_index"][0]), int(b["start"][0])) for b in it]
  half = len(order) // 2
  assert sorted(order[:half]) == sorted(order[half:]) and order[:half] != order[half:]


def test_checkpoint_resume_is_exact(source):
  kw = dict(window=10, stride=3, batch_size=3, image_size=SIZE, seed=7, augment=True,
            shard_index=0, shard_count=1, num_threads=2)
  it = pipeline.make_train_iterator(source, **kw)
  _take(it, 4)
  state = json.dumps(it.get_state())
  expected = _take(it, 10)  # crosses an epoch boundary (33 windows per epoch)
  fresh = pipeline.make_train_iterator(source, **kw)
  fresh.set_state(json.loads(state))
  assert _same(_take(fresh, 10), expected)


def test_orbax_checkpoint_of_the_iterator(source, tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  import grain  # pylint: disable=g-import-not-at-top
  kw = dict(window=10, stride=3, batch_size=2, image_size=16, seed=0, shard_index=0,
            shard_count=1)
  it = pipeline.make_train_iterator(source, **kw)
  _take(it, 3)
  with ocp.CheckpointManager(tmp_path) as mngr:
    mngr.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
    expected = _take(it, 2)
    fresh = pipeline.make_train_iterator(source, **kw)
    mngr.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
  assert _same(_take(fresh, 2), expected)


def test_eval_windows_cover_every_frame(source):
  window, stride, bs = 16, 6, 5
  batches = list(pipeline.eval_windows(source, window, stride, batch_size=bs,
                                       image_size=SIZE, classes=("micro", "macro")))
  again = list(pipeline.eval_windows(source, window, stride, batch_size=bs, image_size=SIZE,
                                     classes=("micro", "macro")))
  assert _same(batches, again)
  rows = []
  for b in batches:
    assert b["video"].shape[0] == bs
    valid = b["batch_valid"] == 1
    assert not b["frame_mask"][~valid].any() and (b["video_index"][~valid] == -1).all()
    real = {k: v[valid] for k, v in b.items()}
    _check_batch(real, source, window, ("micro", "macro"))
    rows += list(zip(real["video_index"].tolist(), real["start"].tolist()))
  assert not all(batches[-1]["batch_valid"])  # 9 + 1 + 6 windows -> last batch padded
  expect = [(v, int(s)) for v, r in enumerate(source)
            for s in windows_lib.eval_starts(len(r["frames"]), window, stride)]
  assert rows == expect  # source order, grid + end-aligned window
  for v, r in enumerate(source):
    n = len(r["frames"])
    cover = np.zeros(n, int)
    for vi, s in rows:
      if vi == v:
        assert s + window <= n or s == 0
        cover[s:s + window] += 1
    assert (cover >= 1).all()
  avg = pipeline.ScoreAverager(source)
  for b in batches:  # score = frame index -> averaged score = frame index
    avg.add(b, (b["start"][:, None] + np.arange(window))[..., None].astype(float))
  for v, r in enumerate(source):
    np.testing.assert_allclose(avg.result()[v][:, 0], np.arange(len(r["frames"])))


def test_eval_sharding_pads_to_equal_batches(source):
  kw = dict(window=16, stride=6, batch_size=4, image_size=8)
  s = [list(pipeline.make_eval_iterator(source, shard_index=i, shard_count=3, **kw))
       for i in range(3)]
  assert len({len(x) for x in s}) == 1
  rows = [(int(v), int(st)) for x in s for b in x
          for v, st, ok in zip(b["video_index"], b["start"], b["batch_valid"]) if ok]
  full = [(int(v), int(st)) for b in pipeline.eval_windows(source, 16, 6, batch_size=4,
                                                            image_size=8)
          for v, st, ok in zip(b["video_index"], b["start"], b["batch_valid"]) if ok]
  assert sorted(rows) == sorted(full)


@pytest.mark.parametrize("num_threads", [0, 2])
def test_overlapping_eval_windows_decode_each_frame_once(source, monkeypatch, num_threads):
  # Each frame was decoded and resized window / stride times (2x at the configs' 16 / 8).
  kw = dict(window=16, stride=4, batch_size=3, image_size=2 * SIZE,
            classes=("micro", "macro"), num_threads=num_threads)
  index = sources.VideoIndex(source)
  plain = pipeline.WindowLoader(index, 16, kw["classes"], 2 * SIZE)  # keeps no frames
  decoded = []
  decode = pipeline.decode_frame
  monkeypatch.setattr(pipeline, "decode_frame",
                      lambda data, vid="", frame=-1: decoded.append((vid, frame)) or
                      decode(data, vid, frame))
  batches = list(pipeline.eval_windows(index, **kw))
  monkeypatch.setattr(pipeline, "decode_frame", decode)
  for b in batches:  # the same frames as windows decoded one by one
    for w, (vi, st) in enumerate(zip(b["video_index"], b["start"])):
      np.testing.assert_array_equal(b["video"][w], plain((vi, st))["video"])
  assert len(set(decoded)) == sum(len(r["frames"]) for r in source)
  if num_threads == 0:
    assert len(decoded) == len(set(decoded))
  else:  # two threads on overlapping windows may both decode a frame (4x without keeping)
    assert max(collections.Counter(decoded).values()) <= num_threads


def test_only_window_frames_are_decoded():
  rec = _record(40, [(12, 14, 0)])
  rec["frames"] = [f if 10 <= i < 26 else b"corrupt" for i, f in enumerate(rec["frames"])]
  loader = pipeline.WindowLoader(sources.VideoIndex([rec]), 16, ("micro",), SIZE)
  w = loader((0, 10))
  assert w["video"].any() and w["labels"][2:5, 0].all()
  with pytest.raises(ValueError, match="frame 26"):
    loader((0, 11))


def test_a_frame_that_cannot_be_decoded_is_a_one_line_error_naming_it(source, capsys):
  # It was a bare ValueError: training stopped with a grain traceback.
  from meldae_jax import cli  # pylint: disable=g-import-not-at-top
  bad = dict(source[1], video_id=b"bad")
  bad["frames"] = list(bad["frames"][:4]) + [b"corrupt"] + list(bad["frames"][5:])
  it = pipeline.make_train_iterator([bad], window=8, stride=4, batch_size=2,
                                    image_size=SIZE, shard_index=0, shard_count=1)
  with pytest.raises(SystemExit) as e, cli.one_line_errors():
    next(it)
  assert e.value.code == 2
  assert capsys.readouterr().err.strip() == "error: video 'bad': cannot decode frame 4"


def test_video_index_keeps_no_frames_and_filters_subjects(source):
  index = sources.VideoIndex(source, exclude_subjects=["s2"])
  assert index.indices == [0, 2]
  assert [v.num_frames for v in index] == [60, 45]
  assert not any(hasattr(v, "frames") for v in index)
  assert index.info(2).video_id == "c"
  # Windows report the source's numbering.
  table = pipeline.train_windows(index, 16, 8)
  assert set(table[:, 0].tolist()) == {0, 2}
  ann = index.to_annotations()
  assert ann["videos"]["a"]["intervals"][0] == {"onset": 3, "offset": 8, "type": "micro"}
  assert sources.open_source(source) is source


def test_me_oversampling(source):
  index = sources.VideoIndex(source)
  base = pipeline.train_windows(index, 8, 4)
  over = pipeline.train_windows(index, 8, 4, me_oversample=3)
  has_me = [windows_lib.window_has_micro(index.info(v).intervals, index.info(v).num_frames,
                                         s, 8) for v, s in base.tolist()]
  assert len(over) == len(base) + 2 * sum(has_me)


def test_worker_processes_resume_exactly(source):
  kw = dict(window=10, stride=3, batch_size=3, image_size=16, seed=1, shard_index=0,
            shard_count=1, worker_count=2)
  it = pipeline.make_train_iterator(source, **kw)
  _take(it, 3)
  state = json.dumps(it.get_state())
  expected = _take(it, 4)
  fresh = pipeline.make_train_iterator(source, **kw)
  fresh.set_state(json.loads(state))
  got = _take(fresh, 4)
  it.close()
  fresh.close()
  assert _same(got, expected)


def test_epoch_order_is_a_read_friendly_permutation():
  # 8 * (v + 1) windows per video: all chunks full, so groups are 24 rows apart.
  table = np.array([(v, s) for v in range(10) for s in range(0, 32 * (v + 1), 4)], np.int32)
  order = windows_lib.EpochOrder(table, seed=0, windows_per_read=8, mix_videos=3)
  n = len(table)
  for epoch in range(2):
    rows = np.stack([order[epoch * n + i] for i in range(n)])
    assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, table.tolist()))
    for g in range(0, n, 3 * 8):  # each group of mix_videos chunks spans <= 3 videos
      assert len(set(rows[g:g + 24, 0].tolist())) <= 3
  assert not np.array_equal(order.permutation(0), order.permutation(1))
  again = windows_lib.EpochOrder(table, seed=0, windows_per_read=8, mix_videos=3)
  np.testing.assert_array_equal(again.permutation(1), order.permutation(1))
  uniform = windows_lib.EpochOrder(table, seed=0, windows_per_read=1)
  assert sorted(uniform.permutation(0).tolist()) == list(range(n))


@pytest.mark.parametrize("key", ["subjects", "exclude_subjects"])
def test_video_index_refuses_a_string_for_a_subject_list(key):
  # `v.subject in "s10"` is a substring test: "s1" would pass as well as "s10".
  source = [_record(8, [], video_id="a", subject="s1"),
            _record(8, [], video_id="b", subject="s10")]
  with pytest.raises(TypeError, match=key):
    sources.VideoIndex(source, **{key: "s10"})
  assert [v.subject for v in sources.VideoIndex(source, subjects=["s10"])] == ["s10"]
  with pytest.raises(TypeError, match=key):
    sources.VideoIndex(source).subset(**{key: "s10"})
