"""Look at a corpus: annotated videos and a contact sheet per video, to check labels by eye.

  python -m meldae_jax.data.preview --builder synthetic_conversation/easy --data_dir DIR --out OUT
  python -m meldae_jax.data.preview --generate --difficulty default --out OUT [--videos 3]

For each video it writes `<id>.mp4` (frames x3 with a bar: speaking state, ME/macro
intervals, a cursor) and `<id>_sheet.png`: frames around each ME with the apex boxed, the
amplified apex-minus-onset difference, and a per-frame timeline of the labels and of the
motion energy (mean absolute frame difference) in each facial region.
"""
import argparse
import contextlib
import math
import os
import pathlib
import sys

import cv2
import numpy as np

SPEAK_RGB, LISTEN_RGB, UNKNOWN_RGB = (70, 130, 220), (200, 200, 200), (90, 90, 90)
MICRO_RGB, MACRO_RGB = (230, 40, 40), (250, 160, 20)
TYPE_NAMES = ("micro", "macro")


def default_regions(size: int) -> dict:
  """Boxes (x0, y0, x1, y1) for an aligned face crop of unknown landmarks."""
  def box(x0, y0, x1, y1):
    return tuple(int(round(v * size)) for v in (x0, y0, x1, y1))
  return {"brows": box(0.25, 0.22, 0.75, 0.42), "eyes": box(0.25, 0.38, 0.75, 0.55),
          "nose": box(0.38, 0.5, 0.62, 0.7), "mouth": box(0.3, 0.68, 0.7, 0.88)}


def motion_energy(frames: np.ndarray, box) -> np.ndarray:
  """Mean |frame[t] - frame[t-1]| inside a box (0 for t = 0)."""
  x0, y0, x1, y1 = box
  crop = frames[:, y0:y1, x0:x1].astype(np.float32).mean(-1)
  energy = np.zeros(len(frames), np.float32)
  energy[1:] = np.abs(np.diff(crop, axis=0)).mean((1, 2))
  return energy


class PreviewError(RuntimeError):
  """A corpus that cannot be previewed as asked (e.g. not built: the message gives the
  build command); the one-line message says why."""


def _record_videos(spec, data_dir, split, count):
  """Decoded videos of a built corpus: (video_id, frames, annotations) triples.

  Checks at the call, not at the first video, that the corpus is built: TFDS's KeyError
  on a corpus that is not ("`splits` is empty") named no command to build it.
  """
  from meldae_jax.data import build  # pylint: disable=import-outside-toplevel
  try:
    builder = build.make_builder(spec, data_dir)
  except (build.BuildError, FileNotFoundError) as e:  # an unknown builder or config
    raise PreviewError(str(e)) from None
  if not builder.is_prepared():
    raise PreviewError(" ".join(line.strip() for line in build.not_built_lines(
        builder, spec, data_dir or build.default_data_dir())))
  split = split or _default_split(builder)
  if split.split("[")[0] not in {*builder.info.splits, "all"}:  # TFDS's error came mid-loop
    raise PreviewError(f"{spec} has no split {split!r} (has "
                       f"{sorted(builder.info.splits)})")
  return _decoded_videos(builder, spec, split, count)


def _decoded_videos(builder, spec, split, count):
  from meldae_jax.data.synthetic import decode_frame  # pylint: disable=import-outside-toplevel
  source = builder.as_data_source(split)
  for index in range(min(count, len(source))):
    r = source[index]
    iv = r["intervals"]
    intervals = [dict(onset=int(a), apex=int(p), offset=int(b), type=TYPE_NAMES[int(t)])
                 for a, p, b, t in zip(iv["onset"], iv["apex"], iv["offset"], iv["type"])]
    vid = r["video_id"].decode() if isinstance(r["video_id"], bytes) else str(r["video_id"])
    decoded = []
    for i, data in enumerate(r["frames"]):
      try:
        decoded.append(decode_frame(data))
      except ValueError as e:
        raise PreviewError(f"{spec} {split} video {vid!r} frame {i}: {e}") from e
    frames = np.stack(decoded)
    yield vid, frames, {"fps": float(r["fps"]), "speaking": np.asarray(r["speaking"]),
                        "intervals": intervals}


def _default_split(builder) -> str:
  """`train`, or TFDS's `all` for a corpus without one: casme2 and samm_lv hold one split
  per subject (leave-one-subject-out), so `train` would be an unknown split there."""
  return "train" if "train" in builder.info.splits else "all"


def _generated_videos(difficulty, image_size, seconds, count, seed):
  from meldae_jax.data.synthetic import generate_video  # pylint: disable=import-outside-toplevel
  for i in range(count):
    frames, ann = generate_video(seed + i, difficulty, image_size, int(seconds * 30), 30.0)
    yield f"generated_{seed + i}", frames, ann


def _speaking_text(value) -> str:
  """Speaking state of a frame: 1 speaking, 0 listening, -1 (real corpora) not annotated."""
  return {1: "SPEAKING", 0: "listening"}.get(int(value), "speaking ?")


def _key_frame(iv) -> tuple[int, bool]:
  """(frame to show as the peak, whether it is the annotated apex).

  Real corpora store apex -1 where it is not coded; indexing frames or `speaking` with it
  would show the video's last frame as the apex. The interval's middle frame stands in.
  """
  on, ap, off = int(iv["onset"]), int(iv["apex"]), int(iv["offset"])
  if on <= ap <= off:
    return ap, True
  return (on + off) // 2, False


def _frame_state(t, ann):
  for iv in ann["intervals"]:
    if iv["onset"] <= t <= iv["offset"]:
      return iv
  return None


def write_video(path, frames, ann, scale=3):
  """mp4 with a label bar; the face gets a red (ME) or orange (macro) frame."""
  import imageio.v2 as imageio  # pylint: disable=import-outside-toplevel
  n, size = len(frames), frames.shape[1] * scale
  bar_h = 48
  strip = np.zeros((12, size, 3), np.uint8)
  x_of = lambda t: int(t * size / n)
  for t in range(n):
    state = ann["speaking"][t]
    strip[:6, x_of(t):x_of(t + 1)] = (SPEAK_RGB if state == 1 else LISTEN_RGB if state == 0
                                      else UNKNOWN_RGB)
  for iv in ann["intervals"]:
    colour = MICRO_RGB if iv["type"] == "micro" else MACRO_RGB
    strip[6:, x_of(iv["onset"]):max(x_of(iv["offset"] + 1), x_of(iv["onset"]) + 1)] = colour
  with imageio.get_writer(path, fps=ann["fps"], codec="libx264", quality=6,
                          macro_block_size=16) as writer:
    for t in range(n):
      face = cv2.resize(frames[t], (size, size), interpolation=cv2.INTER_NEAREST)
      iv = _frame_state(t, ann)
      if iv is not None:
        cv2.rectangle(face, (0, 0), (size - 1, size - 1),
                      MICRO_RGB if iv["type"] == "micro" else MACRO_RGB, 6)
      bar = np.full((bar_h, size, 3), 30, np.uint8)
      bar[:12] = strip
      bar[:, x_of(t):x_of(t) + 2] = 255
      text = _speaking_text(ann["speaking"][t])
      if iv is not None:
        text += f"  {iv['type']} {iv.get('action', '')}" + (" APEX" if t == iv["apex"] else "")
      cv2.putText(bar, f"{t:4d} {text}", (4, 38), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                  (255, 255, 255), 1, cv2.LINE_AA)
      writer.append_data(np.concatenate([face, bar], 0))


def write_sheet(path, video_id, frames, ann, max_events=6):
  """Contact sheet of the MEs plus a per-frame timeline of labels and region motion."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  n, size = len(frames), frames.shape[1]
  regions = ann.get("regions") or default_regions(size)
  micros = [iv for iv in ann["intervals"] if iv["type"] == "micro"][:max_events]
  cols = 8
  rows = len(micros)
  fig = plt.figure(figsize=(cols * 1.5, rows * 1.7 + 3.2), dpi=110)
  grid = fig.add_gridspec(rows + 1, cols, height_ratios=[1.0] * rows + [1.9])
  for r, iv in enumerate(micros):
    on, off = iv["onset"], iv["offset"]
    ap, known = _key_frame(iv)
    peak = "apex" if known else "mid"  # apex not coded: the interval's middle frame
    picks = [on - 3, on, (on + ap) // 2, ap, (ap + off + 1) // 2, off, off + 3]
    for c, t in enumerate(picks):
      t = int(np.clip(t, 0, n - 1))
      ax = fig.add_subplot(grid[r, c])
      ax.imshow(frames[t])
      if t == ap:
        for s in ax.spines.values():
          s.set_color("red")
          s.set_linewidth(3)
      ax.set_xticks([])
      ax.set_yticks([])
      ax.set_title((f"{peak} " if t == ap else "") + str(t), fontsize=7,
                   color="red" if t == ap else "black")
      if c == 0:
        state = {1: "spk", 0: "lst"}.get(int(ann["speaking"][ap]), "spk?")
        ax.set_ylabel(f"{iv.get('action', 'micro')}\n{state}", fontsize=7)
    ref = frames[max(on - 1, 0)].astype(np.float32)
    diff = np.abs(frames[ap].astype(np.float32) - ref).mean(-1)
    ax = fig.add_subplot(grid[r, cols - 1])
    ax.imshow(np.clip(diff * 12, 0, 255).astype(np.uint8), cmap="magma", vmin=0, vmax=255)
    if iv.get("region") in regions:
      x0, y0, x1, y1 = regions[iv["region"]]
      ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="cyan", lw=1))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"|{peak}-onset| x12", fontsize=7)
  ax = fig.add_subplot(grid[rows, :])
  t = np.arange(n)
  top = 0.0
  for name, box in regions.items():
    energy = motion_energy(frames, box)
    top = max(top, float(energy.max()))
    ax.plot(t, energy, lw=0.8, label=f"motion {name}")
  top = top or 1.0
  speaking = np.asarray(ann["speaking"])
  ax.fill_between(t, 0, top * (speaking == 1), color="tab:blue", alpha=0.12,
                  step="mid", label="speaking")
  if (speaking < 0).any():
    ax.fill_between(t, 0, top * (speaking < 0), color="grey", alpha=0.12, step="mid",
                    label="speaking not annotated")
  for iv in ann["intervals"]:
    colour = "red" if iv["type"] == "micro" else "orange"
    ax.axvspan(iv["onset"] - 0.5, iv["offset"] + 0.5, color=colour, alpha=0.3)
    if _key_frame(iv)[1]:  # no line for an apex that is not coded (-1)
      ax.axvline(iv["apex"], color=colour, lw=0.6, ls="--")
  ax.set_xlim(0, n - 1)
  ax.set_xlabel("frame (red: micro, orange: macro, blue: speaking, grey: speaking not "
                "annotated; dashed: apex)")
  ax.set_ylabel("mean |dI|")
  ax.legend(fontsize=7, ncol=5, loc="upper right")
  fig.suptitle(f"{video_id}: {len(micros)} micro shown of "
               f"{sum(iv['type'] == 'micro' for iv in ann['intervals'])}", fontsize=9)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


@contextlib.contextmanager
def _written_whole(path: pathlib.Path):
  """Yields a temporary name beside `path` (same extension, so the writer picks the same
  format) that becomes `path` only when the block ends without an error: a preview
  stopped mid-video leaves no truncated mp4 that looks finished."""
  tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--builder", default="synthetic_conversation/easy",
                      help="<name>[/<config>] of a built corpus")
  parser.add_argument("--data_dir", default=None,
                      help="default $TFDS_DATA_DIR, else ~/tensorflow_datasets")
  parser.add_argument("--split", default=None,
                      help="default: train, or all where there is none (casme2, samm_lv: "
                           "one split per subject, e.g. subject_15)")
  parser.add_argument("--generate", action="store_true",
                      help="render straight from the synthetic generator, no TFDS build")
  parser.add_argument("--difficulty", default="default", help="with --generate")
  parser.add_argument("--image_size", type=int, default=112, help="with --generate")
  parser.add_argument("--seconds", type=float, default=20.0, help="with --generate")
  parser.add_argument("--seed", type=int, default=0, help="with --generate")
  parser.add_argument("--videos", type=int, default=3)
  parser.add_argument("--no_video", action="store_true", help="only the PNG sheets")
  parser.add_argument("--out", required=True)
  args = parser.parse_args(argv)
  out = pathlib.Path(os.path.expanduser(args.out))
  # Flag values before anything is read or written (they were tracebacks, or no video).
  if out.exists() and not out.is_dir():
    parser.error(f"--out {args.out} is a file, not a folder")
  if args.videos < 1:
    parser.error(f"--videos must be at least 1, got {args.videos}")
  difficulty = args.difficulty
  if args.generate:
    if not args.image_size >= 1 or not args.seconds * 30 >= 1:
      parser.error(f"--image_size {args.image_size} and --seconds {args.seconds}: need at "
                   "least 1 pixel and 1 frame (1/30 s)")
    if difficulty not in ("easy", "default", "hard"):
      try:
        difficulty = float(difficulty)
      except ValueError:
        difficulty = math.nan
      if not 0 <= difficulty <= 1:
        parser.error(f"--difficulty {args.difficulty}: easy, default, hard or a number "
                     "in [0, 1]")
  try:  # a corpus not built, or a frame that will not decode part way (those before
    # it are written whole): one line
    if args.generate:
      videos = _generated_videos(difficulty, args.image_size, args.seconds, args.videos,
                                 args.seed)
    else:
      videos = _record_videos(args.builder, args.data_dir, args.split, args.videos)
    out.mkdir(parents=True, exist_ok=True)  # not before: a failed call left an empty folder
    for video_id, frames, ann in videos:
      stem = str(video_id).replace("/", "__")  # casme2's s15/..., mmew's disgust/...
      with _written_whole(out / f"{stem}_sheet.png") as tmp:
        write_sheet(tmp, video_id, frames, ann)
      if not args.no_video:
        with _written_whole(out / f"{stem}.mp4") as tmp:
          write_video(str(tmp), frames, ann)
      print(f"{video_id}: {len(frames)} frames, {len(ann['intervals'])} intervals -> {out}")
  except PreviewError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  main()
