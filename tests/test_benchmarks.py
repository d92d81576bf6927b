"""benchmarks/step.py on the tiny model: the JSON figures and the export for the port.

The PyTorch port (benchmarks/torch_port.py) needs torch, which this venv lacks; its
equivalence is checked by hand with `torch_port.py --check` on an export.
"""
import concurrent.futures
import json
import os
import pathlib
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

from benchmarks import common  # pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import step  # pylint: disable=g-import-not-at-top,wrong-import-position
from meldae_jax.ops import blas_dot  # pylint: disable=g-import-not-at-top,wrong-import-position
from meldae_jax.ops import host_alloc  # pylint: disable=g-import-not-at-top,wrong-import-position
from meldae_jax.ops import native  # pylint: disable=g-import-not-at-top,wrong-import-position

# Tiny programs: XLA's backend optimisations cost more than they save.
FAST = {"xla_backend_optimization_level": 0}
STEPS = 2
TRAIN_BATCH = 3  # not the tiny config's 2


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """The train run, and the infer run with an export, in two threads.

  XLA compiles outside the GIL, so the two compilations overlap (the timings are only
  checked for sanity here).
  """
  out = tmp_path_factory.mktemp("export")
  kw = dict(steps=STEPS, warmup=1, peak_size=128, compiler_options=FAST,
            return_outputs=True)
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    # The train run on B=TRAIN_BATCH clips (`--batch`), with a small bf16 peak (MFU's).
    train = pool.submit(step.run, "tiny", "train", batch=TRAIN_BATCH, bf16_peak_size=64,
                        **kw)
    # No gradients in the export: the backward pass would double the compile time.
    infer = pool.submit(step.run, "tiny", "infer", export_dir=str(out),
                        export_grads=False, **kw)
    return dict(train=train.result(), infer=infer.result())


@pytest.fixture(scope="module")
def train_figures(runs):
  return runs["train"][0]


@pytest.fixture(scope="module")
def exported(runs):
  return runs["infer"][0]


def _custom_calls_on(f, mode) -> bool:
  """Whether the step's program had any CPU custom call (asked as step.py traced it:
  the same process, the same switches)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from meldae_jax.ops import blas_attention, cpu_adamw, cpu_bias_gelu, cpu_layer_norm  # pylint: disable=g-import-not-at-top
  return bool(f["cpu_gemm"] or f["sgemm_weight_grads"]
              or blas_attention.enabled(jnp.float32) or cpu_layer_norm.enabled(jnp.float32)
              or cpu_bias_gelu.enabled(jnp.float32)
              or (mode == "train" and cpu_adamw.enabled()))


def _check_common(f, mode, batch):
  shape = common.CONFIGS["tiny"]
  assert f["config"] == "tiny" and f["mode"] == mode and f["dtype"] == "fp32"
  assert f["frames"] == shape.frames and f["batch"] == batch
  assert f["steps"] == STEPS and f["params"] > 0
  assert 0 < f["min_s"] <= f["median_s"] <= f["max_s"]
  assert f["frames_per_s"] == pytest.approx(batch * shape.frames / f["median_s"])
  # No datasheet peak on the CPU, so no MFU.
  assert f["nominal_bf16_peak_tflops"] is None and f["mfu"] is None
  # XLA counts scanned blocks once and CPU custom calls (sgemm, the attention's calls,
  # the LayerNorm and bias+GELU calls, the fused AdamW) not at all, so step.py counts an
  # unrolled twin with XLA's ops; the compiled program's own count is lower.
  assert f["cpu_gemm"] in (True, False)
  assert f["sgemm_weight_grads"] is (mode == "train" and blas_dot.sgemm_weight_grads())
  if f["scan_blocks"] or _custom_calls_on(f, mode):
    assert f["flops_per_step"] > f["xla_flops_compiled"] > 0
  else:  # the same program, before and after XLA's rewrites (1.1 % apart at 'tiny')
    assert f["flops_per_step"] == pytest.approx(f["xla_flops_compiled"], rel=0.05)
  if f["cpu_gemm"]:
    assert f["sgemm_peak_gflops_per_s"] > 0
  assert (f["blas_core"] is not None) == f["cpu_gemm"]
  # The host: CPU time of the steps (positive, at most all cores' worth), steal, model.
  assert 0 < f["cpu_s_per_step"]
  assert 0 <= f["steps_steal_fraction"] <= 1
  assert f["cpu_avx512"] in (True, False) and f["cpu_model_name"]
  # The caching allocator is installed on the CPU backend (unless switched off).
  assert f["host_alloc"] == (host_alloc.install() > 0)
  assert f["host_alloc_cached_mib"] >= 0
  assert isinstance(f["minor_faults_per_step"], int) and f["minor_faults_per_step"] >= 0
  assert f["gflops_per_s"] == pytest.approx(f["flops_per_step"] / f["median_s"] / 1e9)
  assert f["matmul_peak_gflops_per_s"] > 0 and f["fraction_of_peak"] > 0
  if native.compiler():  # the FMA loop could be built
    assert f["fma_vector_bits"] in (128, 256, 512)
    assert f["fraction_of_fma_peak"] == pytest.approx(
        f["gflops_per_s"] / f["fma_peak_gflops_per_s"])
  assert f["compile_seconds"] > 0
  assert f["peak_rss_mib"] >= f["peak_rss_after_compile_mib"] > 0
  # (No ordering: the other thread's run resets the same process's peak mark.)
  assert f["steps_peak_rss_mib"] > 0 and f["rss_before_steps_mib"] > 0
  assert f["xla_temp_mib"] >= 0 and f["xla_total_mib"] > 0
  assert f["backend"] == "cpu" and f["jax_version"] and f["cpu_count"] >= 1
  json.dumps(f)  # one JSON line


def test_train_figures(train_figures):
  f = train_figures
  _check_common(f, "train", TRAIN_BATCH)
  assert np.isfinite(f["loss"]) and f["loss"] > 0
  assert f["xla_alias_mib"] > 0  # the donated state is reused in place
  assert f["bf16_matmul_peak_size"] == 64 and f["bf16_matmul_peak_tflops"] > 0
  assert f["fraction_of_bf16_matmul_peak"] == pytest.approx(
      f["gflops_per_s"] / (f["bf16_matmul_peak_tflops"] * 1e3))


def test_infer_figures(exported):
  _check_common(exported, "infer", common.CONFIGS["tiny"].batch)
  assert exported["loc_logits_finite"]
  # The CPU default: no bf16 peak (a product that size would take minutes).
  assert exported["bf16_matmul_peak_tflops"] is None
  assert exported["fraction_of_bf16_matmul_peak"] is None


def test_batch_must_be_positive():
  with pytest.raises(ValueError, match="--batch 0"):
    step.run("tiny", "infer", batch=0)


@pytest.mark.parametrize("kind,tflops", [
    ("NVIDIA H200", 989.4), ("NVIDIA H200 NVL", 835.5), ("NVIDIA H100 80GB HBM3", 989.4),
    ("NVIDIA H100 PCIe", 756.5), ("NVIDIA A100-SXM4-80GB", 312.0), ("cpu", None),
    ("TPU v5 lite", None)])
def test_nominal_bf16_peak_by_device_kind(kind, tflops):
  assert common.nominal_bf16_tflops(kind, environ={}) == tflops
  assert common.nominal_bf16_tflops(kind, {"MELDAE_BF16_PEAK_TFLOPS": "197"}) == 197.0


def test_mfu_divides_by_the_device_peak():
  f = step.accelerator_figures(445e3, "NVIDIA H200", "gpu", bf16_peak_size=0)
  assert f["nominal_bf16_peak_tflops"] == 989.4
  assert f["mfu"] == pytest.approx(445.0 / 989.4)
  assert f["bf16_matmul_peak_tflops"] is None and f["fraction_of_bf16_matmul_peak"] is None
  f = step.accelerator_figures(None, "NVIDIA H200", "gpu", bf16_peak_size=0)
  assert f["mfu"] is None  # an untimed run


def test_train_step_counts_more_flops_than_forward(train_figures, exported):
  assert train_figures["flops_per_step"] > 2 * exported["flops_per_step"]


def test_fma_peak_measures_every_thread_at_the_cpus_vector_width():
  from benchmarks import fma_peak  # pylint: disable=g-import-not-at-top
  if not native.compiler():
    pytest.skip("no C++ compiler")
  f = fma_peak.fma_peak(seconds=0.02, threads=2, repeats=3)
  assert f["fma_threads"] == 2 and len(f["fma_peak_per_thread"]) == 2
  assert all(r > 0 for r in f["fma_peak_per_thread"])
  assert f["fma_peak_gflops_per_s"] == pytest.approx(sum(f["fma_peak_per_thread"]))
  assert len(f["fma_peak_sums"]) == 3 and f["fma_peak_gflops_per_s"] == max(f["fma_peak_sums"])
  features = np._core._multiarray_umath.__cpu_features__  # pylint: disable=protected-access
  want = 512 if features.get("AVX512F") else 256 if (
      features.get("AVX2") and features.get("FMA3")) else 128
  assert f["fma_vector_bits"] == want
  for bad in (dict(seconds=0), dict(threads=0), dict(repeats=0)):
    with pytest.raises(ValueError):
      fma_peak.fma_peak(**bad)


@pytest.mark.skipif(not shutil.which("objdump"), reason="no objdump to read the code")
def test_fma_peak_runs_fma_instructions():
  """The native calls are built with -ffp-contract=off: a written `a * b + c` would be a
  multiply and an add (17 % under the peak on Zen 4), so the loop uses FMA intrinsics."""
  from benchmarks import fma_peak  # pylint: disable=g-import-not-at-top
  features = np._core._multiarray_umath.__cpu_features__  # pylint: disable=protected-access
  if not native.compiler() or not features.get("FMA3"):
    pytest.skip("no C++ compiler or no FMA")
  library = native.build(fma_peak._SRC)  # pylint: disable=protected-access
  code = subprocess.run(["objdump", "-d", str(library)], capture_output=True, text=True,
                        check=True).stdout
  assert code.count("vfmadd") >= 24  # 12 accumulators at 512 and at 256 bits


def test_step_reports_no_fma_peak_where_not_measured():
  f = step.cpu_fma_figures(100.0, measure=False)
  assert f == dict(fma_peak_gflops_per_s=None, fma_vector_bits=None,
                   fraction_of_fma_peak=None)


def test_table_lists_runs_and_failures():
  from benchmarks import table  # pylint: disable=g-import-not-at-top
  ok = dict(label="B224 train bf16 B16", median_s=0.0312, min_s=0.0301, max_s=0.0350,
            frames_per_s=8205.1, gflops_per_s=445.2e3, fraction_of_peak=None, mfu=0.45,
            fraction_of_bf16_matmul_peak=0.563, compile_seconds=41.0, peak_rss_mib=5120.4,
            xla_total_mib=30 * 1024.0, device_kind="NVIDIA H200", backend="gpu",
            jax_version="0.11.2", nominal_bf16_peak_tflops=989.4,
            bf16_matmul_peak_tflops=790.4, bf16_matmul_peak_size=8192)
  rows = [ok, dict(label="S112 train bf16 B16", rc=124, error=""),
          dict(label="B224 train fp32 B16", rc=1,
               error="Traceback\nRuntimeError: out of memory\n"),
          dict(label="S112 infer", rc=-1, error="the suite's 500 s budget was spent")]
  lines = table.table(rows).splitlines()
  # No run has a fraction of the fp32 peak: that column is left out.
  assert lines[0].split() == ["run", "median", "s", "min", "s", "max", "s", "img/s",
                              "GFLOP/s", "MFU", "of", "bf16", "dot", "compile", "s",
                              "peak", "RSS", "MiB", "XLA", "MiB"]
  assert lines[1].split() == ["B224", "train", "bf16", "B16", "0.0312", "0.0301",
                              "0.0350", "8205", "445200", "45.0%", "56.3%", "41", "5120",
                              "30720"]
  assert "NVIDIA H200" in lines[2] and "989.4" in lines[2] and "790 TFLOP/s" in lines[2]
  assert lines[3] == "S112 train bf16 B16: timed out"
  assert lines[4] == "B224 train fp32 B16: failed (rc 1) RuntimeError: out of memory"
  assert lines[5] == "S112 infer: not run: the suite's 500 s budget was spent"
  md = table.table(rows[:1], markdown=True).splitlines()
  assert md[0].startswith("| run | median s |") and md[1].startswith("| --- |")
  assert md[2].startswith("| B224 train bf16 B16 | 0.0312 |")


def test_table_says_how_each_side_counts_flops():
  from benchmarks import table  # pylint: disable=g-import-not-at-top
  jax_row = dict(label="S112 train", median_s=1.0, gflops_per_s=215.0, backend="cpu",
                 flops_source="xla_cost_analysis(lowered, unrolled blocks, XLA dots)")
  torch_row = dict(label="torch S112 train", median_s=1.2, gflops_per_s=178.0,
                   flops_source="torch FlopCounterMode, eager fp32 (matmul/conv/bmm only)")
  assert "FLOPs as each side counts them" in table.table([jax_row, torch_row])
  assert "FLOPs as each side" not in table.table([jax_row])


def test_table_names_memory_sweep_rows_and_reads_its_summary():
  """`step.py --memory-sweep` lines have no suite label: the rows are named by their
  shape, and the summary becomes a line per (T, remat) after the table."""
  from benchmarks import table  # pylint: disable=g-import-not-at-top
  row = lambda remat, s: dict(config="S112", mode="train", dtype="fp32", frames=64,  # noqa: E731
                              remat=remat, median_s=s, min_s=s, max_s=s,
                              peak_rss_mib=100.0, kind="memory_sweep")
  summary = dict(kind="memory_sweep_summary", T64_full=dict(
      rss_reduction=2.07, steps_rss_reduction=5.36, xla_temp_reduction=5.86,
      slowdown=1.175))
  lines = table.table([row("none", 3.0), row("full", 3.5), summary]).splitlines()
  assert lines[1].split()[:6] == ["S112", "train", "fp32", "T=64", "remat=none", "3.0000"]
  assert lines[2].split()[4] == "remat=full"
  assert lines[3] == ("T64_full: peak RSS /2.07 (while stepping /5.36, XLA temporaries "
                      "/5.86), step time x1.18")
  assert len(lines) == 4  # no device line: the sweep's rows do not name one


def test_export_round_trips(runs):
  """The .npz holds the benchmark's params, batch and forward outputs, and its loss."""
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from meldae_jax import losses  # pylint: disable=g-import-not-at-top
  from meldae_jax.models import meldae  # pylint: disable=g-import-not-at-top

  figures, outputs = runs["infer"]
  z = np.load(figures["export"])
  meta = json.loads(str(z["meta"]))
  assert meta["config"] == "tiny" and meta["model"]["fusion"] == "per_frame"
  flat = {k[len("param/"):]: z[k] for k in z.files if k.startswith("param/")}
  assert not any(k.startswith("grad") for k in z.files)  # export_grads=False
  assert sum(v.size for v in flat.values()) == figures["params"]

  # Params: the run's own (its init is cached), by path name.
  cfg = step.model_config(common.CONFIGS["tiny"])
  params = step.init_params(meldae.MELDAE(cfg), cfg, compiler_options=FAST)
  ref = traverse_util.flatten_dict(jax.device_get(params), sep="/")
  assert set(ref) == set(flat)
  for k, v in ref.items():
    np.testing.assert_array_equal(flat[k], v, err_msg=k)

  batch = {k[len("batch/"):]: z[k] for k in z.files if k.startswith("batch/")}
  want = common.make_batch(common.CONFIGS["tiny"])
  assert set(batch) == set(want)
  for k, v in want.items():
    assert batch[k].dtype == v.dtype, k
    np.testing.assert_array_equal(batch[k], v, err_msg=k)
  assert batch["frame_mask"].min() == 0  # a padded clip, as the pipeline makes

  # Outputs: the export's program agrees with the benchmark's forward; loss from them.
  for k in ("loc_logits", "state_logits", "me_logit"):
    np.testing.assert_allclose(z[f"out/{k}"], outputs[k], rtol=1e-5, atol=1e-5)
  out = {k: z[f"out/{k}"] for k in ("loc_logits", "state_logits", "me_logit")}
  loss, aux = losses.total_loss(out, batch, step.train_configs()[0])
  np.testing.assert_allclose(z["loss/loss"], loss, rtol=1e-5)
  for k, v in aux.items():
    np.testing.assert_allclose(z[f"loss/{k}"], v, rtol=1e-5, atol=1e-7)


def test_turns_time_the_step_only_after_saying_ready():
  go_read, go_write = os.pipe()
  done_read, done_write = os.pipe()
  said, calls = [], []

  def coordinator():
    said.append(os.read(done_read, 1))  # after the warm-up
    for _ in range(2):
      time.sleep(0.2)  # not the step's time
      os.write(go_write, b"g")
      said.append(os.read(done_read, 1))
    os.write(go_write, b"g")  # the release: time_steps returns only after it

  thread = threading.Thread(target=coordinator)
  thread.start()
  turns = common.Turns(f"{go_read},{done_write}")
  times = common.time_steps(lambda: calls.append(len(said)), 2, 1, turns)
  thread.join()
  assert said == [b"r", b"d", b"d"] and calls == [0, 1, 2] and len(times) == 2
  assert max(times) < 0.1
  os.close(go_write)  # the coordinator went away
  with pytest.raises(RuntimeError, match="went away"):
    turns.wait()
  for fd in (go_read, done_read, done_write):
    os.close(fd)
  with pytest.raises(ValueError, match="two file descriptors"):
    common.Turns("3")


def test_stack_blocks_turns_unrolled_blocks_into_the_scanned_layout():
  """torch_port.py --check reads the scanned layout; the model's default is unrolled."""
  w0, w1 = np.zeros((2, 3)), np.ones((2, 3))
  flat = {"backbone/Transformer/encoderblock_1/Dense_0/kernel": w1,
          "backbone/Transformer/encoderblock_0/Dense_0/kernel": w0,
          "backbone/cls": np.full((1, 1, 3), 7.0)}
  out = common.stack_blocks(flat)
  assert set(out) == {"backbone/Transformer/encoderblock/Dense_0/kernel", "backbone/cls"}
  np.testing.assert_array_equal(out["backbone/Transformer/encoderblock/Dense_0/kernel"],
                                np.stack([w0, w1]))
  assert common.stack_blocks(out).keys() == out.keys()  # scanned: unchanged
  with pytest.raises(ValueError, match=r"blocks \[0, 2\]"):
    common.stack_blocks({"t/encoderblock_0/b": w0, "t/encoderblock_2/b": w1})


def test_vit_variants_copy_matches():
  from meldae_jax.models import vit  # pylint: disable=g-import-not-at-top
  assert common.VIT_VARIANTS == vit.VARIANTS


def test_the_ports_loss_and_optimiser_configs_are_the_projects():
  """torch_port.py's copies (it cannot import the project) of what step.py's step uses:
  the loss config and the optimiser's groups, weight decay and its regex, betas, eps and
  clip norm (the learning-rate schedule is left out, a scalar per step)."""
  import ast  # pylint: disable=g-import-not-at-top
  tree = ast.parse((ROOT / "benchmarks" / "torch_port.py").read_text())
  copies = {t.id: eval(compile(ast.Expression(node.value), "torch_port.py", "eval"),  # pylint: disable=eval-used
                       {"__builtins__": {"dict": dict}})
            for node in tree.body
            if isinstance(node, ast.Assign) for t in node.targets
            if isinstance(t, ast.Name) and t.id in ("LOSS_CONFIG", "OPT_CONFIG")}
  loss_cfg, opt_cfg, _ = step.train_configs()
  assert copies["LOSS_CONFIG"] == loss_cfg.to_dict()
  port = dict(copies["OPT_CONFIG"], groups=[tuple(g) for g in copies["OPT_CONFIG"]["groups"]])
  ours = {k: opt_cfg[k] for k in port}
  assert port == dict(ours, groups=[tuple(g) for g in ours["groups"]])


def test_benchmark_shapes():
  assert common.CONFIGS["Ti112"] == common.Shape("Ti/16", 112, 16, 2, 7, 16, 3)
  assert common.CONFIGS["S112"] == common.Shape("S/16", 112, 16, 2, 7, 16, 6)
  assert common.CONFIGS["B224"] == common.Shape("B/16", 224, 16, 1, 10, 16, 12)
  cfg = step.model_config(common.CONFIGS["S112"], "bf16", "full", frames=64)
  assert (cfg.num_frames, cfg.dtype, cfg.remat_policy, cfg.enhancer_layers,
          cfg.fusion, cfg.num_classes) == (64, "bfloat16", "full", 1, "per_frame", 1)


def test_cost_flops_accepts_dict_or_list():
  class Fake:
    def __init__(self, ca):
      self.ca = ca

    def cost_analysis(self):
      return self.ca

  assert step.cost_flops(Fake({"flops": 3.0})) == 3.0
  assert step.cost_flops(Fake([{"flops": 5.0}])) == 5.0
  assert step.cost_flops(Fake([])) is None
  assert step.cost_flops(Fake(None)) is None


def test_sweep_summary():
  rows = [dict(frames=64, remat="none", peak_rss_mib=4000.0, xla_temp_mib=3000.0,
               xla_total_mib=3300.0, median_s=1.0, rss_before_steps_mib=1000.0,
               steps_peak_rss_mib=3400.0),
          dict(frames=64, remat="full", peak_rss_mib=1000.0, xla_temp_mib=500.0,
               xla_total_mib=1100.0, median_s=1.3, rss_before_steps_mib=900.0,
               steps_peak_rss_mib=1500.0),
          dict(frames=32, remat="full", error="boom")]
  s = common.sweep_summary(rows)
  assert s == {"T64_full": dict(rss_reduction=4.0, steps_rss_reduction=4.0,
                                xla_temp_reduction=6.0, xla_total_reduction=3.0,
                                slowdown=1.3)}


def test_model_overrides_are_typed_and_checked():
  shape = common.CONFIGS["tiny"]
  c = step.model_config(shape, overrides={"scan_blocks": "false", "num_queries": "3"})
  assert c.scan_blocks is False and c.num_queries == 3
  assert step.model_config(shape, overrides={"scan_blocks": "true"}).scan_blocks is True
  with pytest.raises(ValueError, match="no 'scan_block'"):
    step.model_config(shape, overrides={"scan_block": "false"})


def test_flops_of_scanned_blocks_count_every_block():
  import jax  # pylint: disable=g-import-not-at-top
  shape = common.CONFIGS["tiny"]
  mcfg = step.model_config(shape, overrides={"scan_blocks": "true"})
  model = step.meldae.MELDAE(mcfg)
  batch = {k: jax.numpy.asarray(v) for k, v in common.make_batch(shape).items()}
  params = step.init_params(model, mcfg, abstract=True)
  fn, _, args = step.step_fn_and_args(model, "infer", params, batch)
  scanned = step.cost_flops(jax.jit(fn).lower(*args))  # the loop body counted once
  assert step.unrolled_flops(mcfg, "infer", batch) > scanned > 0


def test_flops_do_not_depend_on_the_custom_calls(monkeypatch):
  """The count is the model's, whichever CPU custom calls (LayerNorm, attention, GELU)
  would run it: each of them has no FLOP count of its own in XLA's analysis."""
  import contextlib  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from meldae_jax.ops import blas_attention  # pylint: disable=g-import-not-at-top
  from meldae_jax.ops import cpu_bias_gelu  # pylint: disable=g-import-not-at-top
  from meldae_jax.ops import cpu_layer_norm  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(blas_dot, "cpu_has_avx512", lambda: True)  # the calls on any CPU
  shape = common.CONFIGS["tiny"]
  mcfg = step.model_config(shape)
  batch = {k: jax.numpy.asarray(v) for k, v in common.make_batch(shape).items()}
  counts = set()
  for off in (contextlib.nullcontext(), blas_attention.xla_attention(),
              cpu_layer_norm.flax_layer_norm(), cpu_bias_gelu.xla_bias_gelu()):
    with off:
      counts.add(step.unrolled_flops(mcfg, "infer", batch))
  assert len(counts) == 1 and counts.pop() > 0


def test_train_flops_do_not_depend_on_the_fused_adamw(monkeypatch):
  """The train step's count includes the optimiser's, as XLA's ops, also where the
  fused AdamW call would run it."""
  import jax  # pylint: disable=g-import-not-at-top
  from meldae_jax import optim  # pylint: disable=g-import-not-at-top
  from meldae_jax.ops import cpu_adamw  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(blas_dot, "cpu_has_avx512", lambda: True)  # the calls on any CPU
  shape = common.CONFIGS["tiny"]
  mcfg = step.model_config(shape)
  batch = {k: jax.numpy.asarray(v) for k, v in common.make_batch(shape).items()}
  loss_cfg, opt_cfg, total = step.train_configs()
  tx = optim.make_optimizer(opt_cfg, total)[0]
  with_call = step.unrolled_flops(mcfg, "train", batch, tx, loss_cfg)
  with cpu_adamw.xla_adamw():
    without = step.unrolled_flops(mcfg, "train", batch, tx, loss_cfg)
  assert with_call == without > 0


@pytest.mark.parametrize("dtype", ["bf16", "bf16_matmul"])
def test_bf16_training_loss_tracks_fp32(dtype):
  """benchmarks/bf16_loss.py on the tiny model: bf16 compute (all of it, or the matmul
  operands) really differs from fp32 (so it ran in bf16), and stays within the stated
  tolerance over a short run."""
  from benchmarks import bf16_loss  # pylint: disable=g-import-not-at-top
  report = bf16_loss.compare("tiny", steps=4, rtol=0.02, compiler_options=FAST,
                             dtype=dtype)
  assert len(report["fp32_loss"]) == len(report["bf16_loss"]) == 4
  assert 0 < report["max_rel_diff"] <= 0.02, report
  assert report["within_rtol"]
  assert len(set(report["fp32_loss"])) == 4  # a new batch every step: the loss moves


def test_attention_calls_times_every_piece_and_checks_the_cores_agree():
  from benchmarks import attention_calls  # pylint: disable=g-import-not-at-top
  n, length, d, h = attention_calls.dims("S112")
  assert (n, length, d, h) == (32, 50, 384, 6)  # B T frames of 7 x 7 patches + class
  lines = {l["piece"]: l for l in attention_calls.measure("tiny", reps=2)}
  assert set(lines) == {"scores", "softmax", "context", "scores_grad", "softmax_grad",
                        "qkv_grad", "qkv_read_write", "core_calls", "core_xla"}
  assert all(l["median_ms"] > 0 and l["gb_per_s"] > 0 for l in lines.values())
  one = lines["scores"]["gflop"]
  n, length, d, h = attention_calls.dims("tiny")
  assert one == pytest.approx(2 * n * h * length * length * (d // h) / 1e9)
  assert lines["qkv_grad"]["gflop"] == pytest.approx(3 * one)
  assert lines["core_calls"]["gflop"] == lines["core_xla"]["gflop"] == pytest.approx(6 * one)
  assert lines["softmax"]["gflops_per_s"] is None
  assert lines["core_calls"]["grad_max_abs_diff"] < 1e-3


def test_attention_calls_says_when_the_calls_are_off(monkeypatch):
  from benchmarks import attention_calls  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv("MELDAE_CPU_ATTENTION", "0")
  with pytest.raises(SystemExit, match="not available"):
    attention_calls.measure("tiny", reps=1)


@pytest.mark.parametrize("which,dtype", [("jax", "fp32"), ("jax", "bf16"), ("sgemm", "fp32"),
                                         ("amx", "bf16")])
def test_matmul_shapes_prints_a_rate_per_shape(capsys, which, dtype):
  from benchmarks import matmul_shapes  # pylint: disable=g-import-not-at-top
  from meldae_jax.ops import amx_gemm  # pylint: disable=g-import-not-at-top
  if which == "sgemm" and not blas_dot.available():
    pytest.skip("no sgemm custom call on this host")
  if which == "amx" and not amx_gemm.available():
    pytest.skip("no AMX on this host")
  matmul_shapes.main(which, dtype, shapes=[(64, 32, 48), (16, 8, 24)])
  lines = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
  assert [(l["m"], l["k"], l["n"]) for l in lines] == [(64, 32, 48), (16, 8, 24)]
  for l in lines:
    assert l["library"] == which and l["dtype"] == dtype and l["median_ms"] > 0
    assert l["gflops_per_s"] == pytest.approx(2 * l["m"] * l["k"] * l["n"] / l["median_ms"] / 1e6)


def test_matmul_shapes_bf16_is_for_jax_torch_and_amx_only():
  from benchmarks import matmul_shapes  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="bf16 is for jax, torch and amx"):
    matmul_shapes.main("numpy", "bf16")
  with pytest.raises(ValueError, match="pass --dtype bf16"):
    matmul_shapes.main("amx", "fp32")


def test_optimizer_step_prints_both_paths(capsys, monkeypatch):
  """benchmarks/optimizer_step.py on the tiny model: a line per path, its figures
  consistent (the bytes a step moves over its median time)."""
  from benchmarks import optimizer_step  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(blas_dot, "cpu_has_avx512", lambda: True)  # the calls on any CPU
  optimizer_step.main(["--config", "tiny", "--rounds", "2", "--per-turn", "2"])
  lines = [json.loads(l) for l in capsys.readouterr().out.splitlines() if l.startswith("{")]
  assert [(l["path"], l["fused_call"]) for l in lines] == [("fused", True),
                                                          ("optax", False)]
  for l in lines:
    assert l["config"] == "tiny" and l["steps"] == 4 and l["params"] > 0
    assert 0 < l["min_ms"] <= l["median_ms"]
    assert l["gbytes_per_s"] == pytest.approx(
        optimizer_step.BYTES_PER_PARAM * l["params"] / (l["median_ms"] / 1e3) / 1e9)


def _gpu_suite(tmp_path, **env):
  """`benchmarks/gpu_suite.sh run` in smoke mode (tiny model, CPU): its JSON rows, stdout."""
  out = tmp_path / "out"
  (tmp_path / "no_wheels").mkdir()
  env = {**os.environ, "SMOKE": "1", "OUT": str(out), "PY": sys.executable,
         "TORCH_PY": sys.executable, "WHL": str(tmp_path / "no_wheels"), **env}
  done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), "run"],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
                        check=True)
  rows = [json.loads(l) for l in (out / "gpu.jsonl").read_text().splitlines()]
  return rows, done.stdout


def test_gpu_suite_runs_the_chosen_rows_and_tabulates_them(tmp_path):
  # The GPU rows are one prepared call of a lent machine: the script itself must work.
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "gpu.jsonl").write_text('{"label": "an earlier run"}\n')
  rows, stdout = _gpu_suite(
      tmp_path, ROWS="^B224 infer bf16 B16$|^torch B224 train bf16 B16 eager$")
  assert [r["label"] for r in rows] == ["torch B224 train bf16 B16 eager",
                                        "B224 infer bf16 B16"]
  jax_row = rows[1]
  assert (jax_row["config"], jax_row["mode"], jax_row["dtype"], jax_row["batch"]) == (
      "tiny", "infer", "bf16", 16)
  assert jax_row["median_s"] > 0 and jax_row["bf16_matmul_peak_size"] == 32
  torch_row = rows[0]
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
    assert torch_row["median_s"] > 0
  except ImportError:  # this venv: the row is reported as failed, and the rest go on
    assert torch_row["rc"] != 0 and "torch" in torch_row["error"]
    assert "torch B224 train bf16 B16 eager: failed (rc 1)" in stdout
  assert any(l.startswith("B224 infer bf16 B16 ") for l in stdout.splitlines())


def test_gpu_suite_reports_rows_left_when_its_budget_is_spent(tmp_path):
  rows, stdout = _gpu_suite(tmp_path, BUDGET="0")
  assert len(rows) == 7 and len({r["label"] for r in rows}) == 7
  assert all(r["rc"] == -1 and "budget" in r["error"] for r in rows)
  assert stdout.count("not run: the suite's 0 s budget was spent") == 7


def test_the_cpu_model_number_is_read_from_cpuinfo(tmp_path):
  info = tmp_path / "cpuinfo"
  info.write_text("processor\t: 0\ncpu family\t: 25\nmodel\t\t: 17\n"
                  "model name\t: AMD EPYC\n")
  assert common.cpu_model(str(info))["cpu_model"] == "17"
  info.write_text("processor\t: 0\n")
  assert common.cpu_model(str(info))["cpu_model"] is None
  assert common.cpu_model(str(tmp_path / "missing"))["cpu_model"] is None


def test_bf16_loss_reports_the_learning_rates_it_reached():
  """The project's 500-step warmup keeps a short run near lr 0, where bf16 and fp32 cannot
  part: the report says which rates the run reached, and --warmup-steps 0 runs at peak."""
  from benchmarks import bf16_loss  # pylint: disable=g-import-not-at-top
  warm = bf16_loss.lr_max(30)
  peak = bf16_loss.lr_max(30, warmup_steps=0)
  assert max(warm.values()) < 0.06 * max(peak.values())
  assert sorted(peak.values()) == pytest.approx([1e-5, 5e-4], rel=1e-3)
  report = bf16_loss.compare("tiny", steps=2, rtol=0.02, compiler_options=FAST,
                             dtype="bf16_matmul", warmup_steps=0)
  assert report["warmup_steps"] == 0
  assert report["lr_max"] == bf16_loss.lr_max(2, warmup_steps=0)
  # The option reaches the optimiser: the first update (lr 0 under the warmup) moves.
  at_warmup = bf16_loss.losses("tiny", "fp32", 2, compiler_options=FAST)
  assert report["fp32_loss"][0] == pytest.approx(at_warmup[0])
  assert report["fp32_loss"][1] != pytest.approx(at_warmup[1], rel=1e-6)
