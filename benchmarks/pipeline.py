"""Throughput of the training input pipeline on an in-memory synthetic source.

Prints one JSON line: windows/s and frames/s per setting (T, batch, augmentation). The
pipeline should sustain >= 3x the frames/s the train step consumes (~120-160 frames/s
for Ti/16 at 112 px on 2 CPU cores). `eval` is the evaluation's pass over the same videos
(T=16, `--eval_stride`, batch 16): video frames/s and decodes per frame (1.0: each frame
decoded once however much the windows overlap).

  python benchmarks/pipeline.py [--videos 4 --frames 3000 --seconds 3 --num_threads 2]
"""
import argparse
import itertools
import json
import os
import platform
import tempfile
import time

import cv2
import numpy as np

from meldae_jax.data import pipeline


def synthetic_source(videos: int, frames: int, size: int, seed: int = 0) -> list[dict]:
  """Long videos of smooth, slowly moving, slightly noisy 'faces' (compress like crops)."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
  records = []
  for v in range(videos):
    base = np.stack([120 + 80 * xx, 90 + 60 * yy, 140 - 50 * xx * yy], -1)
    encoded = []
    for t in range(frames):
      cx, cy = 0.5 + 0.05 * np.sin(t / 40.0 + v), 0.5 + 0.05 * np.cos(t / 55.0)
      face = np.exp(-(((xx - cx) / 0.3) ** 2 + ((yy - cy) / 0.4) ** 2))[..., None]
      img = base * (1 - face) + np.array([200, 170, 150]) * face
      img += rng.normal(0, 3, img.shape)
      img = np.clip(img, 0, 255).astype(np.uint8)
      encoded.append(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    onsets = np.arange(50, frames - 40, 150)
    records.append({
        "video_id": f"v{v}".encode(), "subject": f"s{v}".encode(), "fps": np.float32(30),
        "frames": encoded,
        "intervals": {"onset": onsets, "apex": onsets + 4, "offset": onsets + 10,
                      "type": np.zeros_like(onsets)},
        "speaking": (np.arange(frames) // 90 % 2).astype(np.int8),
    })
  return records


def tfds_source(records: list[dict], videos: int, frames: int, data_dir: str):
  """Writes `videos` records (frames cycled from `records`) as a TFDS array_record split."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from meldae_jax.data import schema  # pylint: disable=g-import-not-at-top

  class BenchVideos(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=schema.features())

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for v in range(videos):
        r = records[v % len(records)]
        iv = r["intervals"]
        keep = iv["offset"] < frames
        yield f"v{v}", {
            "video_id": f"v{v}", "subject": f"s{v}", "fps": 30.0,
            "frames": r["frames"][:frames],
            "intervals": [{"onset": a, "apex": b, "offset": c, "type": d} for a, b, c, d in
                          zip(iv["onset"][keep], iv["apex"][keep], iv["offset"][keep],
                              iv["type"][keep])],
            "speaking": r["speaking"][:frames]}

  builder = BenchVideos(data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(verify_ssl=False))
  return builder.as_data_source("train")


def measure(index, *, window, batch_size, augment, seconds, num_threads, image_size,
            **kwargs):
  it = pipeline.make_train_iterator(
      index, window=window, stride=window // 2, batch_size=batch_size,
      classes=("micro", "macro"), image_size=image_size, seed=0, augment=augment,
      shard_index=0, shard_count=1, num_threads=num_threads, **kwargs)
  next(it)  # start threads, warm caches
  n, t0 = 0, time.perf_counter()
  while time.perf_counter() - t0 < seconds:
    next(it)
    n += 1
  dt = time.perf_counter() - t0
  return {"T": window, "batch": batch_size, "augment": bool(augment), **kwargs,
          "windows_per_s": round(n * batch_size / dt, 1),
          "frames_per_s": round(n * batch_size * window / dt, 1)}


def measure_eval(index, *, stride, num_threads, image_size, window=16):
  """One pass of the eval windows over every video: video frames/s, decodes per frame."""
  decodes = [0]
  decode = pipeline.decode_frame

  def counting(*args):
    decodes[0] += 1
    return decode(*args)

  pipeline.decode_frame = counting
  try:
    t0 = time.perf_counter()
    for _ in pipeline.eval_windows(index, window, stride, batch_size=16,
                                   image_size=image_size, num_threads=num_threads):
      pass
    dt = time.perf_counter() - t0
  finally:
    pipeline.decode_frame = decode
  frames = sum(info.num_frames for info in index.infos)
  return {"T": window, "stride": stride, "batch": 16,
          "video_frames_per_s": round(frames / dt, 1),
          "decodes_per_frame": round(decodes[0] / frames, 3)}


def main():
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--videos", type=int, default=4)
  p.add_argument("--frames", type=int, default=3000)
  p.add_argument("--stored_size", type=int, default=112)
  p.add_argument("--image_size", type=int, default=112)
  p.add_argument("--seconds", type=float, default=3.0)
  p.add_argument("--num_threads", type=int, default=2)
  p.add_argument("--tfds_videos", type=int, default=20,
                 help="also measure an array_record TFDS source of this many videos (0: off)")
  p.add_argument("--tfds_frames", type=int, default=1500)
  p.add_argument("--eval_stride", type=int, default=8,
                 help="also measure the eval windows at this stride (0: off)")
  args = p.parse_args()
  t0 = time.perf_counter()
  source = synthetic_source(args.videos, args.frames, args.stored_size)
  t_gen = time.perf_counter() - t0
  index = pipeline.sources.VideoIndex(source)
  results = [measure(index, window=t, batch_size=b, augment=a, seconds=args.seconds,
                     num_threads=args.num_threads, image_size=args.image_size)
             for t, b, a in itertools.product((16, 32), (2, 8), (False, True))]
  eval_result = None
  if args.eval_stride:
    eval_result = measure_eval(index, stride=args.eval_stride, num_threads=args.num_threads,
                               image_size=args.image_size)
  tfds_results = []
  if args.tfds_videos:
    with tempfile.TemporaryDirectory() as tmp:
      t0 = time.perf_counter()
      src = tfds_source(source, args.tfds_videos, args.tfds_frames, tmp)
      t_build = time.perf_counter() - t0
      t0 = time.perf_counter()
      tindex = pipeline.sources.VideoIndex(src)
      t_index = time.perf_counter() - t0
      t0 = time.perf_counter()
      _ = src[0]
      t_read = time.perf_counter() - t0
      tfds_results = [
          measure(tindex, window=16, batch_size=8, augment=False, seconds=args.seconds,
                  num_threads=args.num_threads, image_size=args.image_size,
                  windows_per_read=k)
          for k in (1, 4, 16, 64)]
    tfds_info = {"videos": args.tfds_videos, "frames_per_video": args.tfds_frames,
                 "build_s": round(t_build, 1), "index_s": round(t_index, 2),
                 "record_read_ms": round(1e3 * t_read, 1), "results": tfds_results}
  else:
    tfds_info = None
  print(json.dumps({
      "benchmark": "pipeline", "videos": args.videos, "frames_per_video": args.frames,
      "stored_size": args.stored_size, "image_size": args.image_size,
      "num_threads": args.num_threads, "cpus": os.cpu_count(),
      "machine": platform.machine(), "source_gen_s": round(t_gen, 1),
      "mean_jpeg_bytes": int(np.mean([len(f) for f in source[0]["frames"]])),
      "results": results, "eval": eval_result, "tfds": tfds_info,
  }))


if __name__ == "__main__":
  main()
