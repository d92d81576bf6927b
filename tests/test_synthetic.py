"""Synthetic conversation corpus: determinism, label sanity, labels match rendered motion."""
import json
import types

import numpy as np
import pytest

from meldae_jax.data import build
from meldae_jax.data import preview
from meldae_jax.data import schema
from meldae_jax.data.synthetic import events
from meldae_jax.data.synthetic import generator
from meldae_jax.data.synthetic import generate_video


def _timelines(count, num_frames=900, difficulty="default"):
  rngs = (np.random.default_rng(1000 + s) for s in range(count))
  return [events.make_timeline(rng, num_frames, 30.0, difficulty) for rng in rngs]


def test_same_seed_same_video_other_seed_differs():
  frames_a, ann_a = generate_video(3, "default", 48, 40)
  frames_b, ann_b = generate_video(3, "default", 48, 40)
  frames_c, ann_c = generate_video(4, "default", 48, 40)
  assert frames_a.shape == (40, 48, 48, 3) and frames_a.dtype == np.uint8
  np.testing.assert_array_equal(frames_a, frames_b)
  np.testing.assert_array_equal(ann_a["speaking"], ann_b["speaking"])
  assert ann_a["intervals"] == ann_b["intervals"]
  assert np.abs(frames_a.astype(int) - frames_c).mean() > 5
  assert ann_a["intervals"] != ann_c["intervals"]


def test_intervals_are_zero_based_inclusive_and_in_range():
  fps = 30.0
  micro_states, micro_count, seconds, speaking_frac = [], 0, 0.0, []
  for tl in _timelines(80):
    n = tl.num_frames
    seconds += n / fps
    speaking_frac.append(tl.speaking.mean())
    assert set(np.unique(tl.speaking)) <= {0, 1}
    prev_offset = -1
    for e in tl.events:  # sorted, non-overlapping
      assert prev_offset < e.onset <= e.apex <= e.offset < n
      prev_offset = e.offset
      length = e.offset - e.onset + 1
      assert e.speaking == tl.speaking[e.apex]
      if e.kind == "micro":
        micro_count += 1
        micro_states.append(e.speaking)
        assert 3 <= length <= 15, length  # 0.1-0.5 s at 30 fps
        assert len(set(tl.speaking[e.onset:e.offset + 1])) == 1  # one state throughout
        assert e.region in ("brows", "eyes", "nose", "mouth")
      else:
        assert e.kind == "macro" and 30 <= length <= 120
  assert 0.52 <= np.mean(micro_states) <= 0.64  # WDMD: ~55-60% of MEs while speaking
  assert 0.45 <= np.mean(speaking_frac) <= 0.65
  assert 3.0 <= seconds / micro_count <= 5.0  # one ME per 3-5 s


def test_me_profile_is_nonzero_exactly_on_the_interval():
  p = events.me_profile(30, onset=10, apex=13, offset=17)
  assert np.all(p[:10] == 0) and np.all(p[18:] == 0)
  assert np.all(p[10:18] > 0) and p[13] == 1.0 and p.argmax() == 13


def _region_ratios(difficulty, seeds=range(8), num_frames=300):
  """inside/outside motion energy in each ME's region, by speaking state."""
  ratios = {0: [], 1: []}
  for seed in seeds:
    frames, ann = generate_video(seed, difficulty, 112, num_frames, me_period_s=1.5)
    n = len(frames)
    for iv in ann["intervals"]:
      if iv["type"] != "micro" or (iv["speaking"] and iv["region"] == "mouth"):
        continue
      energy = preview.motion_energy(frames, ann["regions"][iv["region"]])
      on, off = iv["onset"], iv["offset"]
      outside = np.r_[max(1, on - 20):max(1, on - 4), min(n, off + 6):min(n, off + 22)]
      if len(outside) >= 8:
        ratios[iv["speaking"]].append(energy[on:off + 2].mean() / energy[outside].mean())
  return {k: np.array(v) for k, v in ratios.items()}


def test_region_motion_rises_inside_annotated_micro_expressions():
  ratios = _region_ratios("default")
  listening, speaking = ratios[0], ratios[1]
  assert len(listening) >= 8 and len(speaking) >= 8
  # Listening: the ME region clearly moves more inside the interval than around it.
  assert np.median(listening) > 1.3 and np.mean(listening > 1.0) >= 0.75
  # Speaking (non-mouth MEs): speech shakes the face, yet the region still rises.
  assert np.median(speaking) > 1.15 and np.mean(speaking > 1.0) >= 0.65


def test_counterfactual_change_is_local_and_inside_the_interval():
  frames, ann = generate_video(7, "default", 112, 300, me_period_s=2.0)
  without, ann_without = generate_video(7, "default", 112, 300, me_period_s=2.0,
                                        without_micro=True)
  assert not any(iv["type"] == "micro" for iv in ann_without["intervals"])
  micros = [iv for iv in ann["intervals"] if iv["type"] == "micro"]
  assert micros
  change = np.abs(frames.astype(np.int16) - without).sum((-1))  # (T, S, S)
  in_interval = np.zeros(len(frames), bool)
  for iv in micros:
    in_interval[iv["onset"]:iv["offset"] + 1] = True
    x0, y0, x1, y1 = ann["regions"][iv["region"]]
    apex = change[iv["apex"]]
    local = apex[max(0, y0 - 4):y1 + 4, max(0, x0 - 4):x1 + 4].sum()
    assert apex.sum() > 0 and local / apex.sum() > 0.8, iv
  assert change[~in_interval].sum() == 0  # nothing else differs
  assert change[in_interval].sum((1, 2)).min() > 0


def test_difficulty_scales_me_amplitude():
  assert (events.me_amplitude_px("easy") > events.me_amplitude_px("default")
          > events.me_amplitude_px("hard") > 1.0)
  assert events.me_amplitude_px("default") < events.JAW_PIXELS / 2  # speech dominates
  change = {}
  for level in ("easy", "hard"):
    with_me, ann = generate_video(11, level, 112, 150, me_period_s=1.5)
    without, _ = generate_video(11, level, 112, 150, me_period_s=1.5, without_micro=True)
    change[level] = np.abs(with_me.astype(np.int16) - without).mean()
    amplitudes = [iv["amplitude_px"] for iv in ann["intervals"] if iv["type"] == "micro"]
    assert amplitudes
    change[level + "_px"] = np.mean(amplitudes)
  assert change["easy_px"] > 1.8 * change["hard_px"]
  assert change["easy"] > 1.5 * change["hard"] > 0


def test_corpus_plan_is_subject_disjoint():
  plan = generator.corpus_plan(28)
  subjects = {split: {s.subject for s in plan if s.split == split}
              for split in ("train", "validation", "test")}
  assert [len(subjects[k]) for k in ("train", "validation", "test")] == [20, 4, 4]
  assert not (subjects["train"] & subjects["validation"] or subjects["train"] & subjects["test"]
              or subjects["validation"] & subjects["test"])
  assert len({s.video_id for s in plan}) == len(plan) and 28 <= len(plan) <= 56


def test_tiny_builder_builds_and_reads_back(tmp_path):
  builder = build.build("synthetic_conversation/tiny", data_dir=tmp_path)
  assert build.load_builder_class("synthetic_conversation") is type(builder)
  assert builder.info.features.keys() == schema.features().keys()
  sizes, subjects = {}, {}
  for split in ("train", "validation", "test"):
    source = builder.as_data_source(split)
    sizes[split] = len(source)
    subjects[split] = set()
    for i in range(len(source)):
      r = source[i]
      subjects[split].add(r["subject"])
      n = len(r["frames"])
      assert n == len(r["speaking"]) == 90 and r["fps"] == pytest.approx(30.0)
      frame = generator.decode_frame(r["frames"][0])
      assert frame.shape == (48, 48, 3) and frame.dtype == np.uint8
      iv = r["intervals"]
      for on, ap, off, t in zip(iv["onset"], iv["apex"], iv["offset"], iv["type"]):
        assert 0 <= on <= ap <= off < n and t in (0, 1)
  assert sizes == {"train": 4, "validation": 1, "test": 1}
  assert not (subjects["train"] & subjects["validation"] or subjects["train"] & subjects["test"])


def test_preview_of_videos_whose_ids_hold_a_slash(tmp_path, monkeypatch):
  """CAS(ME)^2's and MMEW's ids (s15/15_0101..., disgust/S02-01-001) named a missing
  subfolder: FileNotFoundError."""
  frames, ann = generate_video(5, "easy", 48, 60)
  monkeypatch.setattr(preview, "_record_videos",
                      lambda *args: iter([("s15/15_0101clip", frames, ann)]))
  preview.main(["--builder", "casme2", "--split", "subject_15", "--videos", "1",
                "--out", str(tmp_path)])
  assert (tmp_path / "s15__15_0101clip_sheet.png").stat().st_size > 0
  assert (tmp_path / "s15__15_0101clip.mp4").stat().st_size > 0


def test_a_preview_stopped_mid_video_leaves_no_truncated_file(tmp_path, monkeypatch):
  frames, ann = generate_video(5, "easy", 48, 60)
  monkeypatch.setattr(preview, "_record_videos", lambda *args: iter([("v", frames, ann)]))
  calls = []

  def put_text(*args, **kwargs):  # the label of frame 30: a crash halfway through
    calls.append(1)
    if len(calls) > 30:
      raise KeyboardInterrupt
    return cv2_put_text(*args, **kwargs)

  import cv2  # pylint: disable=g-import-not-at-top
  cv2_put_text = cv2.putText
  monkeypatch.setattr(preview.cv2, "putText", put_text)
  with pytest.raises(KeyboardInterrupt):
    preview.main(["--builder", "x", "--videos", "1", "--out", str(tmp_path)])
  assert sorted(p.name for p in tmp_path.iterdir()) == ["v_sheet.png"]  # no v.mp4, no temp
  monkeypatch.setattr(preview.cv2, "putText", cv2_put_text)
  preview.main(["--builder", "x", "--videos", "1", "--out", str(tmp_path)])
  assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4", "v_sheet.png"]


@pytest.mark.parametrize("args, words", [
    (["--builder", "x", "--split", "nosplit"], "error: x has no split 'nosplit'"),
    (["--generate", "--difficulty", "bogus"], "--difficulty bogus: easy, default, hard"),
    (["--generate", "--difficulty", "2"], "--difficulty 2: easy, default, hard"),
    (["--generate", "--seconds", "0"], "need at least 1 pixel and 1 frame"),
    (["--generate", "--image_size", "0"], "need at least 1 pixel and 1 frame"),
    (["--generate", "--videos", "-1"], "--videos must be at least 1, got -1"),
    (["--generate", "--out", "file"], "is a file, not a folder"),
])
def test_preview_refuses_bad_inputs_in_one_line_and_writes_nothing(tmp_path, monkeypatch,
                                                                  capsys, args, words):
  """They were tracebacks (an unknown split mid-loop, --difficulty bogus, --seconds 0,
  --image_size 0, an --out file) or no video at all (--videos -1), each after an empty
  --out folder was made."""
  monkeypatch.setattr(build, "make_builder", lambda spec, data_dir: types.SimpleNamespace(
      is_prepared=lambda: True, info=types.SimpleNamespace(splits={"train": None})))
  (tmp_path / "file").write_text("x")
  if "--out" not in args:
    args = args + ["--out", "out"]
  args[args.index("--out") + 1] = str(tmp_path / args[args.index("--out") + 1])
  with pytest.raises(SystemExit) as exit_info:
    preview.main(args)
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert words in err.splitlines()[-1] and "Traceback" not in err, err
  assert not (tmp_path / "out").exists()


def test_preview_writes_a_contact_sheet(tmp_path):
  preview.main(["--generate", "--difficulty", "easy", "--image_size", "48", "--seconds", "3",
                "--videos", "1", "--no_video", "--seed", "5", "--out", str(tmp_path)])
  sheets = list(tmp_path.glob("*_sheet.png"))
  assert len(sheets) == 1 and sheets[0].stat().st_size > 10_000


def _sheet_axes(tmp_path, monkeypatch, frames, ann):
  import matplotlib.figure  # pylint: disable=g-import-not-at-top
  figs = []
  save = matplotlib.figure.Figure.savefig
  monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                      lambda self, *a, **k: (figs.append(self), save(self, *a, **k)))
  preview.write_sheet(tmp_path / "s.png", "v", frames, ann)
  return figs[0].axes


def test_preview_of_an_uncoded_apex_and_unknown_speaking(tmp_path, monkeypatch):
  """Real corpora store apex -1 (not coded) and speaking -1 (not annotated): the sheet
  showed the video's last frame as the apex, took the speaking state from the last frame
  and drew an apex line at -1; speaking -1 was shown as listening."""
  n = 60
  frames = np.full((n, 48, 48, 3), 128, np.uint8)
  frames[-1] = 255
  speaking = np.full((n,), -1, np.int8)
  speaking[-1] = 1
  ann = {"fps": 30.0, "speaking": speaking,
         "intervals": [dict(onset=20, apex=-1, offset=30, type="micro")]}
  axes = _sheet_axes(tmp_path, monkeypatch, frames, ann)
  titles = [ax.get_title() for ax in axes[:8]]
  assert titles[:7] == ["17", "20", "22", "mid 25", "28", "30", "33"]
  assert axes[0].get_ylabel() == "micro\nspk?"
  assert titles[7] == "|mid-onset| x12"
  assert axes[7].images[0].get_array().max() == 0  # mid frame vs onset, not the last frame
  assert not [l for l in axes[-1].lines if l.get_linestyle() == "--"]
  ann["intervals"][0]["apex"] = 24
  ann["speaking"][:] = 0
  axes = _sheet_axes(tmp_path, monkeypatch, frames, ann)
  assert axes[3].get_title() == "apex 24" and axes[0].get_ylabel() == "micro\nlst"
  texts = []
  monkeypatch.setattr(preview.cv2, "putText", lambda img, text, *a, **k: texts.append(text))
  ann["speaking"][:] = -1
  ann["speaking"][:10] = 1
  ann["speaking"][10:20] = 0
  preview.write_video(str(tmp_path / "v.mp4"), frames, ann)
  assert "SPEAKING" in texts[0] and "listening" in texts[10]
  assert "listening" not in texts[30] and "speaking ?" in texts[30]


def test_undecodable_frame_bytes_are_a_clear_error(monkeypatch, tmp_path, capsys):
  """cv2.imdecode's None was indexed: TypeError 'NoneType' object is not subscriptable."""
  with pytest.raises(ValueError, match="could not decode frame bytes"):
    generator.decode_frame(b"not a jpeg")
  good = generator.encode_frames(np.zeros((1, 8, 8, 3), np.uint8))[0]
  record = {"intervals": {k: [] for k in ("onset", "apex", "offset", "type")},
            "frames": [good, b"broken"], "video_id": b"s01_v0", "fps": 30.0,
            "speaking": np.zeros((2,), np.int8)}

  class Builder:
    info = types.SimpleNamespace(splits={"train": None})

    def is_prepared(self):
      return True

    def as_data_source(self, split):
      return [record]

  monkeypatch.setattr(build, "make_builder", lambda spec, data_dir: Builder())
  with pytest.raises(preview.PreviewError, match=r"has no split 'test' \(has \['train'\]\)"):
    preview._record_videos("synthetic_conversation/tiny", None, "test", 1)
  with pytest.raises(preview.PreviewError, match="video 's01_v0' frame 1: could not decode"):
    list(preview._record_videos("synthetic_conversation/tiny", None, "train", 1))
  # The command: one line and exit 2, not a traceback part way through the videos.
  with pytest.raises(SystemExit) as e:
    preview.main(["--builder=synthetic_conversation/tiny", "--split=train", "--out",
                  str(tmp_path / "o"), "--no_video"])
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ") and "frame 1: could not" in err[0]


def test_error_report_counts_hits_misses_and_false_positive_causes():
  from meldae_jax.data.synthetic import error_report  # pylint: disable=g-import-not-at-top
  c = error_report.builder_config("tiny")
  plan = [s for s in generator.corpus_plan(
      c.num_subjects, videos_per_subject=c.videos_per_subject, seconds=c.seconds, fps=c.fps,
      corpus_seed=c.corpus_seed) if s.split == "test"]
  videos, n_me, first = {}, 0, None
  for s in plan:
    tl = generator.video_timeline(s.seed, s.num_frames, c.fps, c.difficulty, c.me_period_s)
    mes = [(e.onset, e.offset) for e in tl.events if e.kind == "micro"]
    n_me += len(mes)
    first = first or ((s.video_id, mes) if mes else None)
    videos[s.video_id] = {"intervals": [{"onset": a, "offset": b} for a, b in mes]}
  assert n_me > 1
  perfect = error_report.report({"videos": videos}, "tiny")
  assert perfect["recall"]["all"] == {"tp": n_me, "n": n_me, "recall": 1.0}
  assert sum(perfect["false_positives"]["by_state"].values()) == 0
  # Move one ME's prediction to where no ME is: one miss and one false positive with a
  # named cause.
  vid, mes = first
  on, off = mes[0]
  free = next(p for p in range(off, 1000) if all(p + 5 < a or p > b for a, b in mes))
  videos[vid]["intervals"][0] = {"onset": free, "offset": free + 5}
  shifted = error_report.report({"videos": videos}, "tiny")
  assert shifted["recall"]["all"]["tp"] == n_me - 1
  assert sum(shifted["false_positives"]["by_state"].values()) == 1
  assert sum(shifted["false_positives"]["by_cause"].values()) == 1
  assert shifted["misses"] == {"mislocalised": 0, "unseen": 1}
  assert shifted["false_positives"]["on_an_me"] == 0
  # Twice its length plus one frame: it overlaps the ME, IoU < 0.5 (and ends short of the
  # next ME, which starts >= 0.6 s later).
  videos[vid]["intervals"][0] = {"onset": on, "offset": off + (off - on + 1) + 1}
  wide = error_report.report({"videos": videos}, "tiny")
  assert wide["recall"]["all"]["tp"] == n_me - 1
  assert wide["misses"] == {"mislocalised": 1, "unseen": 0}
  assert wide["false_positives"]["on_an_me"] == 1
  with pytest.raises(SystemExit, match="no synthetic_conversation level"):
    error_report.builder_config("medium")


@pytest.mark.parametrize("name, text, words", [
    ("test_predictions.json", "not json", "test_predictions.json: invalid JSON"),
    ("test_predictions.json", "[]", 'test_predictions.json: expected {"videos"'),
    ("test_predictions.json", '{"videos": {"x": {"intervals": [{"offset": 3}]}}}',
     'test_predictions.json: expected {"videos"'),
    ("test_predictions.json", None, "test_predictions.json: cannot read"),  # a folder
    ("test_annotations.json", "not json", "test_annotations.json: invalid JSON"),
])
def test_error_report_of_bad_files_is_one_line(tmp_path, capsys, name, text, words):
  """Each was a traceback (JSONDecodeError, AttributeError, KeyError, IsADirectoryError)."""
  from meldae_jax.data.synthetic import error_report  # pylint: disable=g-import-not-at-top
  (tmp_path / "test_predictions.json").write_text('{"videos": {}}')
  if text is None:
    (tmp_path / name).unlink()
    (tmp_path / name).mkdir()
  else:
    (tmp_path / name).write_text(text)
  assert error_report.main(["--workdir", str(tmp_path), "--level", "tiny"]) == 2
  lines = capsys.readouterr().err.splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], lines


def test_a_turn_just_long_enough_for_no_onset_does_not_crash():
  """A turn of exactly length + 4 frames left rng.integers an empty range (seed 3 at 19
  frames raised ValueError: low >= high)."""
  frames, ann = generate_video(3, "default", 32, 19)
  assert len(frames) == 19


def test_render_timeline_skips_the_channels_named():
  tl = generator.video_timeline(7, 60, 30.0, "default", 2.0)
  face = generator.subject_face(1)

  def render(skip=()):
    return generator.render_timeline(tl, face, 48, np.random.default_rng(0), 0.0, skip=skip)

  moving = [n for n, v in tl.controls.items() if np.ptp(v) > 0]
  assert moving and not np.array_equal(render(), render(skip=moving))
  still = render(skip=list(tl.controls))
  np.testing.assert_array_equal(still, still[:1].repeat(len(still), 0))  # nothing moves
  with pytest.raises(ValueError, match="no control channel"):
    render(skip=["tail_wag"])


def test_false_positive_causes_exclude_the_mes_own_motion_and_name_macros():
  from meldae_jax.data.synthetic import error_report  # pylint: disable=g-import-not-at-top
  for seed in range(40):
    tl = generator.video_timeline(seed, 900, 30.0, "default", 2.0)
    nuisance = generator.video_timeline(seed, 900, 30.0, "default", 2.0, without_micro=True)
    macros = [e for e in tl.events if e.kind == "macro"]
    if macros:
      break
  m = macros[0]
  assert error_report.fp_cause(nuisance, macros, m.onset, m.offset) == "macro-expression"
  # An ME's own channels swing in `tl`, not in `nuisance`: the cause is what else moved.
  me = next(e for e in tl.events if e.kind == "micro")
  cause = error_report.fp_cause(nuisance, [], me.onset, me.offset)
  assert cause in set(error_report._CAUSES) | {"none (no nuisance motion)"}  # pylint: disable=protected-access
  flat = generator.video_timeline(seed, 900, 30.0, "default", 2.0, without_micro=True)
  for v in flat.controls.values():
    v[:] = 0.0
  assert error_report.fp_cause(flat, [], 100, 108) == "none (no nuisance motion)"


def test_error_report_takes_the_workdirs_level_and_refuses_another(tmp_path, capsys):
  """Predictions scored against another level's videos of the same ids gave confident
  wrong numbers (the level defaulted to 'default')."""
  from meldae_jax.data.synthetic import error_report  # pylint: disable=g-import-not-at-top
  c = error_report.builder_config("tiny")
  plan = [s for s in generator.corpus_plan(
      c.num_subjects, videos_per_subject=c.videos_per_subject, seconds=c.seconds, fps=c.fps,
      corpus_seed=c.corpus_seed) if s.split == "test"]
  videos, truth = {}, {}
  for s in plan:
    tl = generator.video_timeline(s.seed, s.num_frames, c.fps, c.difficulty, c.me_period_s)
    ivs = [{"onset": e.onset, "offset": e.offset, "type": "micro"}
           for e in tl.events if e.kind == "micro"]
    videos[s.video_id], truth[s.video_id] = {"intervals": ivs}, {"intervals": ivs}
  (tmp_path / "test_predictions.json").write_text(json.dumps({"videos": videos}))
  (tmp_path / "test_annotations.json").write_text(json.dumps({"videos": truth}))
  (tmp_path / "config.json").write_text(json.dumps(
      {"dataset": {"name": "synthetic_conversation", "builder_config": "tiny"}}))
  assert error_report.main(["--workdir", str(tmp_path), "--json"]) == 0
  out = json.loads(capsys.readouterr().out)
  assert out["recall"]["all"]["recall"] == 1.0
  assert error_report.main(["--workdir", str(tmp_path), "--level", "default"]) == 2
  assert "not the 'default' level's" in capsys.readouterr().err


def test_head_and_light_drift_last_as_long_in_seconds_at_any_fps():
  """The drift's smoothing widths were in frames: at 60 fps the head moved twice as fast
  in seconds as at 30 fps (lag-0.5 s autocorrelation of head_tx 0.67 -> 0.24)."""
  def lag_corr(fps, channel):
    out = []
    for seed in range(3):
      n = int(120 * fps)
      c = {name: np.zeros(n) for name in events.CHANNELS}
      events._add_distractors(np.random.default_rng(seed), c, np.zeros(n, np.int8), fps,
                              1.0)
      x = c[channel] - c[channel].mean()
      lag = int(0.5 * fps)
      out.append((x[:-lag] * x[lag:]).mean() / x.var())
    return np.mean(out)

  for channel in ("head_tx", "head_roll", "head_scale", "light_gain"):
    assert abs(lag_corr(60.0, channel) - lag_corr(30.0, channel)) < 0.08, channel


def test_plan_seeds_are_unique_across_corpus_seeds_and_many_videos():
  """Seeds were 1000 * corpus_seed + s and 100_000 * corpus_seed + 100 * s + v: subject
  1000 of corpus 0 was subject 0 of corpus 1 (same face, same video), and video 100 of a
  subject was video 0 of the next subject (same conversation, in another split maybe)."""
  big = generator.corpus_plan(1001, seconds=(0.1, 0.1), corpus_seed=0)
  other = generator.corpus_plan(3, seconds=(0.1, 0.1), corpus_seed=1)
  assert not {s.subject_seed for s in big} & {s.subject_seed for s in other}
  assert not {s.seed for s in big} & {s.seed for s in other}
  many = generator.corpus_plan(3, videos_per_subject=(101, 101), seconds=(0.1, 0.1))
  assert len({s.seed for s in many}) == len(many) == 303
  # Corpora within the old ranges keep their seeds (and so their videos).
  for s in generator.corpus_plan(28, corpus_seed=2):
    subject, video = int(s.subject[1:]), int(s.video_id.split("_v")[1])
    assert s.subject_seed == 2000 + subject and s.seed == 200_000 + 100 * subject + video


def test_expressions_are_at_least_0_6_s_apart_at_any_fps():
  """The gap was round(0.6 * fps) frames: 14 frames, 0.58 s, at 24 fps (and int(0.6 * fps)
  between macros: 17 frames at 29.97 fps)."""
  for fps in (24.0, 29.97):
    gaps = []
    for seed in range(40):
      tl = generator.video_timeline(seed, int(30 * fps), fps, "default", 3.6)
      gaps += [(b.onset - a.offset - 1) / fps for a, b in zip(tl.events, tl.events[1:])]
    assert len(gaps) > 200 and min(gaps) >= 0.6, (fps, min(gaps))
  # At 30 fps the gap is the 18 frames it always was: the released corpora are unchanged.
  assert events._gap_frames(30.0) == 18 and events._gap_frames(25.0) == 15  # pylint: disable=protected-access


def test_a_bad_worker_count_is_a_one_line_build_error(tmp_path, monkeypatch, capsys):
  """MELDAE_SYNTH_WORKERS=two was a ValueError traceback from inside the build."""
  monkeypatch.setenv("MELDAE_SYNTH_WORKERS", "two")
  with pytest.raises(SystemExit) as exit_info:
    build.main(["synthetic_conversation/tiny", "--data_dir", str(tmp_path)])
  assert exit_info.value.code == 2
  lines = capsys.readouterr().err.splitlines()
  assert lines == ["error: MELDAE_SYNTH_WORKERS must be a whole number of render processes, "
                   "got 'two'"], lines
  assert not list(tmp_path.glob("synthetic_conversation/tiny/*"))  # nothing half-built


@pytest.mark.parametrize("onset, offset, words", [
    (60, 50, "predicted interval 0 [60, 50] is reversed [0, 90)"),  # was a silent FP
    (95, 99, "predicted interval 0 [95, 99] is outside [0, 90)"),  # was a numpy error
    (-3, 4, "predicted interval 0 [-3, 4] is outside [0, 90)"),
])
def test_error_report_refuses_predictions_outside_the_video(tmp_path, capsys, onset, offset,
                                                            words):
  from meldae_jax.data.synthetic import error_report  # pylint: disable=g-import-not-at-top
  c = error_report.builder_config("tiny")
  (spec,) = [s for s in generator.corpus_plan(
      c.num_subjects, videos_per_subject=c.videos_per_subject, seconds=c.seconds, fps=c.fps,
      corpus_seed=c.corpus_seed) if s.split == "test"]
  (tmp_path / "test_predictions.json").write_text(json.dumps(
      {"videos": {spec.video_id: {"intervals": [{"onset": onset, "offset": offset}]}}}))
  assert error_report.main(["--workdir", str(tmp_path), "--level", "tiny"]) == 2
  lines = capsys.readouterr().err.splitlines()
  assert lines == [f"error: video {spec.video_id!r}: {words}"], lines
