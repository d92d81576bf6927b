"""Command line: score predicted intervals against annotations (SPEC §5 JSON contract).

  python -m meldae_jax.evaluate --annotations A.json --predictions P.json [--iou 0.5]

Prints one JSON object (the `metrics.evaluate` dict) to stdout. On malformed input it exits
with status 2 and a one-line message on stderr naming the file and the video.
"""
import argparse
import json
import sys
from typing import Any

from meldae_jax import metrics


def _load(path: str) -> Any:
  """Reads one JSON file; any failure becomes a one-line AnnotationError naming it."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except OSError as e:
    raise metrics.AnnotationError(f"{path}: cannot read: {e.strerror or e}") from e
  except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, and
    # json.load's own: an integer literal over Python's digit limit, nesting too deep
    raise metrics.AnnotationError(f"{path}: invalid JSON: {e}".replace("\n", " ")) from e


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m meldae_jax.evaluate",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--annotations", required=True, help="ground-truth JSON (A.json)")
  parser.add_argument("--predictions", required=True, help="predicted intervals (P.json)")
  parser.add_argument("--iou", type=float, default=0.5, help="match threshold (IoU >= iou)")
  args = parser.parse_args(argv)
  if not 0.0 < args.iou <= 1.0:
    parser.error(f"--iou must be in (0, 1], got {args.iou}")
  try:
    result = metrics.evaluate(_load(args.annotations), _load(args.predictions), args.iou,
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
