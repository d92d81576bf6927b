"""Command line: score predicted intervals against annotations (SPEC §5 JSON contract).

  python -m meldae_jax.evaluate --annotations A.json --predictions P.json [--iou 0.5]

Prints one JSON object (the `metrics.evaluate` dict) to stdout. On malformed input it exits
with status 2 and a one-line message on stderr naming the file and the video.
"""
import argparse
import json
import sys

from meldae_jax import metrics


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m meldae_jax.evaluate",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--annotations", required=True, help="ground-truth JSON (A.json)")
  parser.add_argument("--predictions", required=True, help="predicted intervals (P.json)")
  parser.add_argument("--iou", type=float, default=0.5,
                      help="match threshold (IoU >= iou; default 0.5)")
  args = parser.parse_args(argv)
  if not 0.0 < args.iou <= 1.0:
    parser.error(f"--iou must be in (0, 1], got {args.iou}")
  try:
    result = metrics.evaluate(metrics.read_json(args.annotations),
                              metrics.read_json(args.predictions), args.iou,
                              annotations_source=args.annotations,
                              predictions_source=args.predictions)
  except metrics.AnnotationError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  json.dump(result, sys.stdout, sort_keys=True)
  sys.stdout.write("\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
