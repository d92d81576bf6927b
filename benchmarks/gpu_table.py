"""The table at the end of `gpu_suite.sh`: one row per step.py JSON line (or failure).

  python benchmarks/gpu_table.py /tmp/meldae_gpu/gpu.jsonl

The device tool returns only the end of a command's output, so the figures a reader wants
first (seconds, images/s, TFLOP/s, MFU) come last, in a few short lines.
"""
import json
import sys

COLUMNS = (  # header, key, format
    ("run", "label", "{}"),
    ("median s", "median_s", "{:.4f}"),
    ("img/s", "frames_per_s", "{:.0f}"),
    ("TFLOP/s", "gflops_per_s", "{:.1f}"),
    ("MFU", "mfu", "{:.1%}"),
    ("of bf16 dot", "fraction_of_bf16_matmul_peak", "{:.1%}"),
    ("compile s", "compile_seconds", "{:.0f}"),
    ("GiB", "xla_total_mib", "{:.1f}"),
)


def cell(row: dict, key: str, fmt: str) -> str:
  value = row.get(key)
  if value is None:
    return "-"
  if key == "gflops_per_s":
    value /= 1e3
  elif key == "xla_total_mib":
    value /= 1024
  return fmt.format(value)


def table(rows: list[dict]) -> str:
  """Aligned text: a header, a line per run (a failed run: its label and error's end),
  then the device and the peaks the MFU columns divide by."""
  lines = [[h for h, _, _ in COLUMNS]]
  failures = []
  for row in rows:
    if "error" in row:
      why = "timed out" if row.get("rc") in (124, 137) else f"failed (rc {row.get('rc')})"
      last = row["error"].strip().splitlines()[-1:] or [""]
      failures.append(f"{row.get('label')}: {why} {last[0][:200]}".rstrip())
      continue
    lines.append([cell(row, k, f) for _, k, f in COLUMNS])
  widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
  out = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                   for i, (c, w) in enumerate(zip(line, widths))) for line in lines]
  ok = [r for r in rows if "error" not in r]
  if ok:
    r = ok[0]
    out.append(f"device {r.get('device_kind')} ({r.get('backend')}), jax "
               f"{r.get('jax_version')}; bf16 peak: datasheet "
               f"{r.get('nominal_bf16_peak_tflops')} TFLOP/s, measured "
               f"{cell(r, 'bf16_matmul_peak_tflops', '{:.0f}')} TFLOP/s "
               f"({r.get('bf16_matmul_peak_size')}^2 dot)")
  return "\n".join(out + failures)


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  with open(argv[0]) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  print(table(rows))


if __name__ == "__main__":
  main()
