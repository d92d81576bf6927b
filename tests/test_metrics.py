"""SPEC §5 metrics on hand-computed cases: matching, null ratios, speaking states, UF1,
MEGC2020, pooling, validation, clip accuracy and threshold selection."""
import numpy as np
import pytest

from meldae_jax import metrics


def _iv(onset, offset, kind="micro", **extra):
  return dict(onset=onset, offset=offset, type=kind, **extra)


def _ann(videos):
  """videos: {id: (num_frames, [(on, off[, type])], speaking or None)}."""
  out = {}
  for vid, (n, ivs, speaking) in videos.items():
    out[vid] = {"num_frames": n, "fps": 30.0, "intervals": [_iv(*iv) for iv in ivs]}
    if speaking is not None:
      out[vid]["speaking"] = list(speaking)
  return {"videos": out}


def _pred(videos):
  return {"videos": {vid: {"intervals": [_iv(*iv, score=0.9) for iv in ivs]}
                     for vid, ivs in videos.items()}}


def _run(gt, pred, n=100, speaking=None, **kw):
  return metrics.evaluate(_ann({"v": (n, gt, speaking)}), _pred({"v": pred}), **kw)


def _counts(r):
  return r["tp"], r["fp"], r["fn"]


def test_iou_exactly_half_matches():
  r = _run([(0, 9)], [(0, 4)])            # inter 5, union 10
  assert _counts(r) == (1, 0, 0)
  assert (r["precision"], r["recall"], r["f1"]) == (1.0, 1.0, 1.0)


def test_iou_below_half_does_not_match():
  r = _run([(0, 9)], [(0, 3)])            # 0.4
  assert _counts(r) == (0, 1, 1)
  assert (r["precision"], r["recall"], r["f1"]) == (0.0, 0.0, 0.0)
  assert _counts(_run([(0, 9)], [(0, 3)], iou=0.4)) == (1, 0, 0)


def test_one_prediction_over_two_gts():
  # [0,19] has IoU 10/20 = 0.5 with both GTs: one TP only, the other GT is missed.
  r = _run([(0, 9), (10, 19)], [(0, 19)])
  assert _counts(r) == (1, 0, 1)
  assert r["precision"] == 1.0 and r["recall"] == 0.5
  assert r["f1"] == pytest.approx(2 / 3)
  # MEGC2020 counts both GTs as found: precision = found / predictions = 2 / 1.
  assert r["megc2020"]["found"] == 2
  assert r["megc2020"]["recall"] == 1.0
  assert r["megc2020"]["precision"] == 2.0
  assert r["megc2020"]["f1"] == pytest.approx(2 * 2.0 * 1.0 / 3.0)


def test_two_predictions_over_one_gt():
  r = _run([(0, 9)], [(0, 9), (0, 5)])    # IoU 1.0 and 0.6
  assert _counts(r) == (1, 1, 0)
  assert r["precision"] == 0.5 and r["recall"] == 1.0
  m = r["megc2020"]
  assert (m["found"], m["gt"], m["predictions"]) == (1, 1, 2)
  assert m["precision"] == 0.5 and m["f1"] == pytest.approx(2 / 3)


def test_greedy_takes_highest_iou_first():
  # A=[0,9], B=[5,14]; P1=[3,12]: IoU(A)=7/13, IoU(B)=8/12; P2=[0,8]: IoU(A)=.9, IoU(B)=4/15.
  # By IoU: (A,P2) then (B,P1) -> 2 TPs. Letting A grab P1 first would leave 1.
  gt, pred = [(0, 9), (5, 14)], [(3, 12), (0, 8)]
  assert sorted(metrics.match(gt, pred)) == [(0, 1), (1, 0)]
  assert _counts(_run(gt, pred)) == (2, 0, 0)


def test_ties_prefer_earlier_gt_onset_then_earlier_prediction_onset():
  # One prediction, two GTs at IoU 0.5 each, GTs listed late-first: the onset decides.
  assert metrics.match([(10, 19), (0, 9)], [(0, 19)]) == [(1, 0)]
  # One GT, two predictions at IoU 0.5 each, listed late-first.
  assert metrics.match([(0, 9)], [(5, 9), (0, 4)]) == [(0, 1)]


def test_tie_break_decides_speaking_state_of_the_fp():
  # Frames 0-4 speaking, 5-9 listening. GT [0,9] is a 5-5 tie -> speaking. It matches
  # [0,4] (earlier onset); the FP [5,9] is listening.
  speaking = [1] * 5 + [0] * 5 + [-1] * 10
  r = _run([(0, 9)], [(5, 9), (0, 4)], n=20, speaking=speaking)
  assert (r["speaking"]["tp"], r["speaking"]["fp"], r["speaking"]["fn"]) == (1, 0, 0)
  assert (r["listening"]["tp"], r["listening"]["fp"], r["listening"]["fn"]) == (0, 1, 0)
  assert r["f1_speaking"] == 1.0 and r["f1_listening"] == 0.0
  assert r["f1_dr"] == 0.0


def test_empty_predictions():
  r = _run([(0, 9)], [])
  assert _counts(r) == (0, 0, 1)
  assert r["precision"] is None and r["recall"] == 0.0 and r["f1"] == 0.0
  m = r["megc2020"]
  assert m["precision"] is None and m["recall"] == 0.0 and m["f1"] == 0.0


def test_video_missing_from_predictions_has_no_predictions():
  r = metrics.evaluate(_ann({"a": (50, [(0, 9)], None), "b": (50, [(0, 9)], None)}),
                       _pred({"a": [(0, 9)]}))
  assert _counts(r) == (1, 0, 1) and r["num_videos"] == 2


def test_empty_gt_and_predictions_are_all_null():
  r = _run([], [])
  assert _counts(r) == (0, 0, 0)
  for key in ("precision", "recall", "f1", "f1_speaking", "f1_listening", "f1_dr", "uf1"):
    assert r[key] is None, key
  assert r["per_class"] == {}
  assert r["megc2020"] == {"found": 0, "gt": 0, "predictions": 0,
                           "precision": None, "recall": None, "f1": None}


def test_empty_gt_with_predictions():
  r = _run([], [(0, 9)])
  assert _counts(r) == (0, 1, 0)
  assert r["precision"] == 0.0 and r["recall"] is None and r["f1"] == 0.0
  assert r["uf1"] is None     # no class is present in the ground truth


def test_unknown_speaking_counts_in_neither_state():
  r = _run([(0, 9)], [(0, 9), (30, 39)], n=40, speaking=[-1] * 40)
  assert _counts(r) == (1, 1, 0)
  for state in ("speaking", "listening"):
    assert (r[state]["tp"], r[state]["fp"], r[state]["fn"]) == (0, 0, 0)
  assert r["f1_speaking"] is None and r["f1_listening"] is None and r["f1_dr"] is None


def test_no_speaking_labels_means_unknown():
  r = _run([(0, 9)], [(0, 9)], n=20)
  assert r["speaking"]["tp"] == 0 and r["listening"]["tp"] == 0
  assert r["f1_dr"] is None


def test_interval_state_majority():
  s = [-1] * 7 + [0, 1, 1]
  assert metrics.interval_state(s, 0, 9) == "speaking"        # 2 vs 1, -1 ignored
  assert metrics.interval_state(s, 7, 8) == "speaking"        # 1 vs 1 tie
  assert metrics.interval_state(s, 0, 7) == "listening"
  assert metrics.interval_state(s, 0, 6) is None              # all -1
  assert metrics.interval_state(None, 0, 6) is None


def test_f1_dr_harmonic_mean():
  # Speaking: GT [0,9] found (tp 1). Listening: GT [20,29] found, plus an FP [40,49].
  # F1_s = 1, F1_l = 2/(2+1) = 2/3, F1_DR = 2 * 1 * 2/3 / (5/3) = 0.8.
  speaking = [1] * 10 + [0] * 50
  r = _run([(0, 9), (20, 29)], [(0, 9), (20, 29), (40, 49)], n=60, speaking=speaking)
  assert r["f1_speaking"] == 1.0
  assert r["f1_listening"] == pytest.approx(2 / 3)
  assert r["f1_dr"] == pytest.approx(0.8)


def test_f1_dr_zero_and_null():
  assert metrics.harmonic(0.0, 0.5) == 0.0
  assert metrics.harmonic(0.0, None) == 0.0        # SPEC order: 0 first
  assert metrics.harmonic(None, 0.5) is None
  assert metrics.harmonic(1.0, 0.5) == pytest.approx(2 / 3)
  # Only speaking intervals: listening has nothing at all -> F1_l None -> F1_DR None.
  r = _run([(0, 9)], [(0, 9)], n=20, speaking=[1] * 20)
  assert r["f1_speaking"] == 1.0 and r["f1_listening"] is None and r["f1_dr"] is None


def test_per_class_and_uf1():
  gt = [(0, 9, "micro"), (20, 39, "macro"), (50, 69, "macro")]
  pred = [(0, 9, "micro"), (20, 39, "macro"), (80, 89, "macro")]
  r = _run(gt, pred)
  assert r["per_class"]["micro"] == {"tp": 1, "fp": 0, "fn": 0, "precision": 1.0,
                                     "recall": 1.0, "f1": 1.0}
  macro = r["per_class"]["macro"]
  assert (macro["tp"], macro["fp"], macro["fn"]) == (1, 1, 1)
  assert macro["f1"] == pytest.approx(0.5)                    # 2 / (2 + 1 + 1)
  assert r["uf1"] == pytest.approx(0.75)
  assert _counts(r) == (2, 1, 1) and r["f1"] == pytest.approx(2 / 3)


def test_types_never_match_across_classes():
  r = _run([(0, 9, "micro")], [(0, 9, "macro")])
  assert r["per_class"]["micro"]["fn"] == 1 and r["per_class"]["macro"]["fp"] == 1
  assert r["uf1"] == 0.0                                      # micro only is in the GT
  assert r["megc2020"]["found"] == 0


def test_uf1_only_over_classes_present_in_gt():
  r = _run([(0, 9, "micro")], [(0, 9, "micro"), (50, 59, "macro")])
  assert r["per_class"]["macro"]["f1"] == 0.0
  assert r["uf1"] == 1.0
  assert r["f1"] == pytest.approx(2 / 3)


def test_classes_restricts_evaluation():
  r = _run([(0, 9, "micro"), (20, 39, "macro")], [(0, 9, "micro")], classes=("micro",))
  assert list(r["per_class"]) == ["micro"] and _counts(r) == (1, 0, 0)
  assert r["megc2020"]["gt"] == 1


def test_pooling_folds_equals_union():
  # Fold 1: one TP. Fold 2: one FN and two FPs. Pooled: tp 1, fp 2, fn 1 ->
  # P = 1/3, R = 1/2, F1 = 2 / (2 + 2 + 1) = 0.4 (the mean of fold F1s would be 0.5).
  speaking = [1] * 30 + [0] * 30
  fold1 = {"a": (60, [(0, 9)], speaking)}
  fold2 = {"b": (60, [(0, 9, "macro")], speaking)}
  p1, p2 = {"a": [(0, 9)]}, {"b": [(30, 39), (40, 49)]}
  r1 = metrics.evaluate(_ann(fold1), _pred(p1))
  r2 = metrics.evaluate(_ann(fold2), _pred(p2))
  pooled = metrics.pool_results([r1, r2])
  assert _counts(pooled) == (1, 2, 1)
  assert pooled["precision"] == pytest.approx(1 / 3)
  assert pooled["recall"] == pytest.approx(0.5)
  assert pooled["f1"] == pytest.approx(0.4)
  assert pooled["listening"]["fp"] == 2 and pooled["speaking"]["fn"] == 1
  union = metrics.evaluate(_ann({**fold1, **fold2}), _pred({**p1, **p2}))
  assert pooled == union


def test_clip_accuracy():
  probs, labels = [0.9, 0.4, 0.5, 0.1], [1, 1, 1, 0]   # predictions 1, 0, 1, 0
  assert metrics.clip_accuracy(probs, labels) == 0.75
  assert metrics.clip_accuracy(probs, labels, valid=[1, 0, 1, 1]) == 1.0
  assert metrics.clip_accuracy(probs, labels, valid=[0, 0, 0, 0]) is None


def test_pool_clip_accuracies_counts_clips():
  small = {"acc_me": 1.0, "acc_me_clips": metrics.clip_counts([0.9], [1])}
  large = {"acc_me": 0.0, "acc_me_clips": metrics.clip_counts([0.1] * 9, [1] * 9)}
  pooled = metrics.pool_clip_accuracies([small, large])
  assert pooled == {"acc_me": 0.1, "acc_me_clips": {"correct": 1, "clips": 10}}
  # A result without counts (an older metrics.json) cannot be pooled: None, not a mean.
  assert metrics.pool_clip_accuracies([small, {"acc_me": 0.5}]) == {
      "acc_me": None, "acc_me_clips": None}
  assert metrics.clip_counts([0.9, 0.1], [1, 1], valid=[0, 0]) == {"correct": 0, "clips": 0}


def _threshold_case(speaking=None):
  # GT micro [5,9]; scores 0.6 on it, 0.8 on a false alarm [14,15], 0.1 elsewhere.
  scores = np.full((20, 1), 0.1)
  scores[5:10] = 0.6
  scores[14:16] = 0.8
  return {"v": scores}, _ann({"v": (20, [(5, 9)], speaking)})


def test_choose_threshold_falls_back_to_f1():
  scores, ann = _threshold_case()
  # 0.5: TP + FP -> F1 2/3; 0.7: FP + FN -> 0; 0.9: FN -> 0.
  out = metrics.choose_threshold(scores, ann, [0.9, 0.5, 0.7])
  assert out["key"] == "f1" and out["threshold"] == 0.5
  assert out["value"] == pytest.approx(2 / 3)
  # 0.3 decodes the same intervals as 0.5: the tie goes to the lower threshold.
  assert metrics.choose_threshold(scores, ann, [0.5, 0.3])["threshold"] == 0.3


def test_choose_threshold_needs_ground_truth_in_both_states_for_f1_dr():
  # GT only in speaking frames, a false alarm in listening frames: F1_DR is 0 at both
  # 0.5 (F1_l = 0) and 0.7 (F1_s = 0), and would be None at 0.9 (no listening item at
  # all). Whether it is "defined for every candidate" would depend on the predictions,
  # so the validation rounds of one run could rank by different metrics. F1 ranks.
  scores, ann = _threshold_case(speaking=[1] * 12 + [0] * 8)
  for candidates in ([0.7, 0.5], [0.9, 0.7, 0.5]):
    out = metrics.choose_threshold(scores, ann, candidates)
    assert out["key"] == "f1" and out["threshold"] == 0.5
    assert out["value"] == pytest.approx(2 / 3)


def test_choose_threshold_prefers_higher_f1_dr():
  # Speaking GT [5,9]; listening GT [14,15]; scores 0.6 and 0.8 respectively.
  # 0.5 finds both (F1_DR 1); 0.7 finds only the listening one (F1_s 0 -> F1_DR 0).
  scores, _ = _threshold_case()
  ann = _ann({"v": (20, [(5, 9), (14, 15)], [1] * 12 + [0] * 8)})
  out = metrics.choose_threshold(scores, ann, [0.7, 0.5])
  assert out["key"] == "f1_dr" and out["threshold"] == 0.5 and out["value"] == 1.0


# --- validation ---------------------------------------------------------------------------

def _bad(ann_video=None, pred_video=None, pred_id="clip_7"):
  ann = {"videos": {"clip_7": {"num_frames": 20, "intervals": [_iv(2, 5)],
                               "speaking": [0] * 20}}}
  ann["videos"]["clip_7"].update(ann_video or {})
  pred = {"videos": {pred_id: {"intervals": [_iv(2, 5)]}}}
  pred["videos"][pred_id].update(pred_video or {})
  return ann, pred


@pytest.mark.parametrize("ann_video, pred_video, pred_id, source, words", [
    ({"intervals": [_iv(6, 5)]}, None, "clip_7", "A.json", "onset 6 > offset 5"),
    (None, {"intervals": [_iv(6, 5)]}, "clip_7", "P.json", "onset 6 > offset 5"),
    ({"intervals": [_iv(-1, 5)]}, None, "clip_7", "A.json", "outside"),
    (None, {"intervals": [_iv(15, 20)]}, "clip_7", "P.json", "outside [0, 20)"),
    (None, {"intervals": [_iv(2, 5, "giggle")]}, "clip_7", "P.json", "unknown type"),
    ({"intervals": [_iv(2, 5, "Micro")]}, None, "clip_7", "A.json", "unknown type"),
    ({"speaking": [0] * 19}, None, "clip_7", "A.json", "length 19"),
    ({"speaking": [0] * 19 + [2]}, None, "clip_7", "A.json", "speaking value 2"),
    (None, None, "clip_8", "P.json", "not in the annotations"),
    ({"intervals": [{"onset": 2, "type": "micro"}]}, None, "clip_7", "A.json", '"offset"'),
    (None, {"intervals": [{"onset": 2, "offset": 5}]}, "clip_7", "P.json", '"type"'),
    ({"intervals": [_iv(2.5, 5)]}, None, "clip_7", "A.json", "not an integer"),
    (None, {"intervals": [_iv(2, True)]}, "clip_7", "P.json", "not an integer"),
    ({"num_frames": "20"}, None, "clip_7", "A.json", "num_frames"),
])
def test_validation_errors(ann_video, pred_video, pred_id, source, words):
  ann, pred = _bad(ann_video, pred_video, pred_id)
  with pytest.raises(metrics.AnnotationError) as info:
    metrics.evaluate(ann, pred, annotations_source="A.json", predictions_source="P.json")
  message = str(info.value)
  assert "\n" not in message
  assert message.startswith(source) and pred_id in message and words in message
  assert isinstance(info.value, ValueError)


def test_validation_missing_videos_and_num_frames():
  with pytest.raises(metrics.AnnotationError, match="A.json"):
    metrics.evaluate({"clips": {}}, {"videos": {}}, annotations_source="A.json")
  ann, pred = _bad()
  del ann["videos"]["clip_7"]["num_frames"]
  with pytest.raises(metrics.AnnotationError, match=r"clip_7.*\"num_frames\""):
    metrics.evaluate(ann, pred)


def test_valid_input_passes():
  ann, pred = _bad()
  r = metrics.evaluate(ann, pred)
  assert _counts(r) == (1, 0, 0) and r["listening"]["tp"] == 1
