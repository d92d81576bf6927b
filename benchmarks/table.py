"""A table of `step.py` JSON lines: one row per run (or failure), the issue's figures.

  python benchmarks/table.py /tmp/meldae_perf/jax.jsonl [--markdown]
  python benchmarks/table.py /tmp/meldae_gpu/gpu.jsonl      # gpu_suite.sh's last lines
  python benchmarks/table.py /tmp/meldae_perf/memory.jsonl  # `step.py --memory-sweep`

Rows without a suite's label are named by their shape (config, mode, dtype, T, remat);
a memory sweep's summary line becomes a line per (T, remat) after the table.

Columns no row has a value for are left out (MFU on the CPU, say). The device tool returns
only the end of a command's output, so `gpu_suite.sh` ends with this table; `--markdown`
is for docs/performance.md.
"""
import argparse
import json

COLUMNS = (  # header, key, format
    ("run", "label", "{}"),
    ("median s", "median_s", "{:.4f}"),
    ("min s", "min_s", "{:.4f}"),
    ("max s", "max_s", "{:.4f}"),
    ("img/s", "frames_per_s", "{:.0f}"),
    ("GFLOP/s", "gflops_per_s", "{:.0f}"),
    ("of fp32 dot", "fraction_of_peak", "{:.0%}"),
    ("of FMA peak", "fraction_of_fma_peak", "{:.0%}"),
    ("MFU", "mfu", "{:.1%}"),
    ("of bf16 dot", "fraction_of_bf16_matmul_peak", "{:.1%}"),
    ("compile s", "compile_seconds", "{:.0f}"),
    ("peak RSS MiB", "peak_rss_mib", "{:.0f}"),
    ("XLA MiB", "xla_total_mib", "{:.0f}"),
)


def label(row: dict):
  """The suite's label, else the run's shape (a memory sweep's rows have no label)."""
  if row.get("label") is not None or "config" not in row:
    return row.get("label")
  parts = [row["config"], row.get("mode"), row.get("dtype")]
  if "remat" in row:
    parts += [f"T={row.get('frames')}", f"remat={row['remat']}"]
  return " ".join(str(p) for p in parts if p is not None)


def cell(row: dict, key: str, fmt: str) -> str:
  value = label(row) if key == "label" else row.get(key)
  return "-" if value is None else fmt.format(value)


def sweep_lines(summary: dict) -> list[str]:
  """`step.py --memory-sweep`'s summary: per T and remat, the factors against no remat."""
  out = []
  for key, f in summary.items():
    if isinstance(f, dict):
      xla_total = (f", all XLA buffers /{f['xla_total_reduction']:.2f}"
                   if f.get("xla_total_reduction") else "")
      out.append(f"{key}: peak RSS /{f['rss_reduction']:.2f} (while stepping "
                 f"/{f['steps_rss_reduction']:.2f}, XLA temporaries "
                 f"/{f['xla_temp_reduction']:.2f}{xla_total}), step time "
                 f"x{f['slowdown']:.2f}")
  return out


def table(rows: list[dict], markdown: bool = False) -> str:
  """A header, a line per run (a failed run: its label and its error's last line at the
  end), then the device and the matmul peaks the fractions divide by."""
  summaries = [r for r in rows if r.get("kind") == "memory_sweep_summary"]
  rows = [r for r in rows if r.get("kind") != "memory_sweep_summary"]
  ok = [r for r in rows if "error" not in r]
  columns = [c for c in COLUMNS if c[1] == "label" or any(r.get(c[1]) is not None
                                                          for r in ok)]
  lines = [[h for h, _, _ in columns]] + [[cell(r, k, f) for _, k, f in columns]
                                          for r in ok]
  if markdown:
    out = ["| " + " | ".join(line) + " |" for line in lines]
    out.insert(1, "|" + "|".join(" --- " for _ in columns) + "|")
  else:
    widths = [max(len(line[i]) for line in lines) for i in range(len(columns))]
    out = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                     for i, (c, w) in enumerate(zip(line, widths))) for line in lines]
  if ok and ok[0].get("backend"):  # a memory sweep's rows do not say
    r = ok[0]
    peaks = [f"fp32 {r['matmul_peak_gflops_per_s']:.0f} GFLOP/s (4096^2 dot)"
             if r.get("matmul_peak_gflops_per_s") else None,
             f"fp32 FMA {r['fma_peak_gflops_per_s']:.0f} GFLOP/s "
             f"({r.get('fma_vector_bits')}-bit, all cores)"
             if r.get("fma_peak_gflops_per_s") else None,
             f"bf16 {r['bf16_matmul_peak_tflops']:.0f} TFLOP/s "
             f"({r.get('bf16_matmul_peak_size')}^2 dot)"
             if r.get("bf16_matmul_peak_tflops") else None,
             f"datasheet bf16 {r['nominal_bf16_peak_tflops']} TFLOP/s"
             if r.get("nominal_bf16_peak_tflops") else None]
    device = r.get("cpu_model_name") if r.get("backend") == "cpu" else r.get("device_kind")
    if markdown:  # a paragraph of its own after the table
      out.append("")
    out.append(f"device {device} ({r.get('backend')}), jax {r.get('jax_version')}; "
               "peaks (first run): " + (", ".join(p for p in peaks if p) or "not measured"))
  counted = sorted({r["flops_source"] for r in ok if r.get("flops_source")})
  if len(counted) > 1:  # step.py's and torch_port.py's rows side by side
    out.append(("" if not markdown else "\n") + "FLOPs as each side counts them: "
               + "; ".join(counted) + ". XLA counts every op, FlopCounterMode the "
               "matmuls only: for the same matmuls JAX's GFLOP/s and MFU read ~1 % higher "
               "(0.6-1.1 % at Ti112 and S112, session 31).")
  for summary in summaries:
    if markdown:
      out.append("")
    out += [f"- {line}" if markdown else line for line in sweep_lines(summary)]
  for row in rows:
    if "error" in row:
      why = ("timed out" if row.get("rc") in (124, 137) else "not run:"
             if row.get("rc") == -1 else f"failed (rc {row.get('rc')})")
      last = row["error"].strip().splitlines()[-1:] or [""]
      out.append(f"{row.get('label')}: {why} {last[0][:200]}".rstrip())
  return "\n".join(out)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("jsonl")
  p.add_argument("--markdown", action="store_true")
  a = p.parse_args(argv)
  with open(a.jsonl) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  print(table(rows, a.markdown))


if __name__ == "__main__":
  main()
