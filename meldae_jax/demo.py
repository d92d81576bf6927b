"""`make demo`: build the synthetic corpus if needed, train the default config, report.

  python -m meldae_jax.demo [--level=default|easy] [--workdir=demo_workdir]
                            [--data_dir=...] [--steps=N]

Sized for a 2-core CPU (< 20 minutes from a fresh clone, corpus build included). The
corpus goes to `$TFDS_DATA_DIR` when set, else `<workdir>/tensorflow_datasets`; each run
trains from scratch in `<workdir>/run`. The test metrics are printed at the end, next to
those of the untrained model (same decoding, threshold chosen on validation).
"""
from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _number(v) -> str:
  return "n/a" if v is None else f"{v:.3f}"


def _table(rows: list[tuple[str, dict]]) -> str:
  keys = ("f1", "precision", "recall", "f1_dr", "f1_speaking", "f1_listening", "acc_me",
          "acc_state")
  fmt = lambda v: "   n/a" if v is None else f"{v:6.3f}"
  lines = ["            " + " ".join(f"{k:>12s}" for k in keys)]
  for name, m in rows:
    lines.append(f"{name:12s}" + " ".join(f"{fmt(m.get(k)):>12s}" for k in keys))
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--level", default="default", choices=("default", "easy"),
                      help="synthetic_conversation level (default: default)")
  parser.add_argument("--workdir", default=str(ROOT / "demo_workdir"),
                      help="the run goes to WORKDIR/run, replaced each time "
                           "(default: demo_workdir in the repository)")
  parser.add_argument("--data_dir", default=None,
                      help="the corpus, built there if missing (default: $TFDS_DATA_DIR, else "
                           "WORKDIR/tensorflow_datasets)")
  parser.add_argument("--steps", type=int, default=None, help="override total_steps")
  parser.add_argument("--no_baseline", action="store_true",
                      help="skip scoring the untrained model")
  args = parser.parse_args(argv)
  if args.steps is not None and args.steps < 1:
    parser.error(f"--steps must be at least 1, got {args.steps}")
  args.workdir = os.path.expanduser(args.workdir)  # `--workdir=~/x`: no shell expands it
  args.data_dir = args.data_dir and os.path.expanduser(args.data_dir)
  if os.path.exists(args.workdir) and not os.path.isdir(args.workdir):
    parser.error(f"--workdir {args.workdir} is a file, not a folder")

  t0 = time.time()
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)
  import jax  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, str(ROOT))
  from configs import synthetic  # pylint: disable=g-import-not-at-top
  from meldae_jax import cli  # pylint: disable=g-import-not-at-top
  from meldae_jax import predict  # pylint: disable=g-import-not-at-top
  from meldae_jax import train  # pylint: disable=g-import-not-at-top

  cfg = synthetic.get_config(args.level)
  cfg.dataset.data_dir = (args.data_dir or os.environ.get("TFDS_DATA_DIR")
                          or os.path.join(args.workdir, "tensorflow_datasets"))
  if args.steps is not None:
    cfg.total_steps = args.steps
  run_dir = os.path.join(args.workdir, "run")
  shutil.rmtree(run_dir, ignore_errors=True)
  print(f"MELDAE-JAX demo: synthetic_conversation/{args.level}, {cfg.total_steps} steps of "
        f"batch {cfg.batch_size} (ViT {cfg.model.variant} at {cfg.model.image_size}px, "
        f"T={cfg.dataset.window}) on {jax.device_count()} {jax.devices()[0].platform} "
        f"device(s); workdir {run_dir}", flush=True)

  with cli.one_line_errors():  # e.g. a --data_dir that is a file: main's one-line errors
    splits = train.open_splits(cfg)   # builds the corpus on first use
    baseline = None
    if not args.no_baseline and splits.val is not None and splits.test is not None:
      print("Scoring the untrained model (threshold chosen on validation) ...", flush=True)
      trainer = train.make_trainer(cfg)
      with jax.set_mesh(trainer.mesh):
        state = trainer.init_fn(jax.random.key(cfg.seed))
        val = predict.evaluate_split(trainer, state.params, splits.val, cfg, threshold=None)
        baseline = predict.evaluate_split(trainer, state.params, splits.test, cfg,
                                          threshold=val["threshold"],
                                          threshold_key=val["threshold_key"])
      del trainer, state
    result = train.train_and_evaluate(cfg, run_dir, splits=splits)
  if result.get("status") != "done":  # SIGTERM: the demo starts afresh when rerun
    print(f"Demo stopped at step {result.get('step')} ({result.get('status')}); rerunning "
          f"it starts again from scratch.", file=sys.stderr)
    return 1

  rows = [("trained", result)] + ([("untrained", baseline)] if baseline else [])
  print("\nTest split (subject-disjoint), micro-expression spotting, IoU >= 0.5:")
  print(_table(rows))
  print(f"trained: TP {result['tp']} FP {result['fp']} FN {result['fn']}, "
        f"threshold {result['threshold']:.2f} (chosen on validation), best step "
        f"{result['best_step']}; MEGC2020 F1 {_number(result['megc2020']['f1'])}")
  print(f"metrics: {os.path.join(run_dir, 'metrics.json')}; re-score with\n"
        f"  python -m meldae_jax.evaluate --annotations {run_dir}/test_annotations.json "
        f"--predictions {run_dir}/test_predictions.json")
  print(f"Demo finished in {(time.time() - t0) / 60:.1f} min.")
  return 0


if __name__ == "__main__":
  sys.exit(main())
