"""XManager-style launcher for MELDAE-JAX sweeps; falls back to local commands.

  python launch/launch.py --config=configs/wdmd.py --sweep=ablations --workdir=/tmp/abl
  python launch/launch.py --config=configs/synthetic.py:easy --sweep=loc_loss \
      --workdir=/tmp/loss --run            # run the local commands one after another
  python launch/launch.py ... --xm         # XManager (xm_local), when it is installed:
                                           # see launch_xm for what its containers get
  python launch/launch.py --config=configs/wdmd.py --sweep=ablations --workdir=/tmp/abl \
      --results [--plot=/tmp/abl/val_f1_dr.png]   # the runs' table beside the paper's

Without `--xm` (or without XManager installed) it prints one `python -m meldae_jax.main`
command per run of the sweep (see launch/sweeps.py); other `--config.KEY=VALUE` flags
(e.g. `--config.dataset.data_dir=D`) are passed on to every run, except a key the sweep
sets itself (the pretrained ViT of the paper configs: `MELDAE_VIT_INIT=PATH`); `--run`
executes them (each run's exit status to `<run>/launch_exit.json`) and then prints the
results table. `--results` prints it for runs made before (launch/results.py: each
run's test figures, their difference to the sweep's full model, and the paper's figure
for the run), `--plot` draws the runs' validation curves (the paper's Figure 4 for
`loc_loss`) and their test figures beside the paper's (a LOSO sweep: these alone). It
imports the project only to read the config of the `ablations` sweep (its ResNet-50 run
takes the config's learning rate for the rest of the model), and XManager only inside
`launch_xm`.
"""
import argparse
import importlib.util
import os
import pathlib
import shlex
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent


def _load(name: str):
  spec = importlib.util.spec_from_file_location(f"meldae_{name}", HERE / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _sweeps():
  return _load("sweeps")


def run_dirs(config: str, sweep: str, workdir: str) -> list[tuple[str, str]]:
  """(run name, its workdir) for every run of the sweep."""
  sweeps = _sweeps()
  _, workdir = _absolute(config, workdir)
  names = [sweeps.run_name(overrides) for overrides in sweeps.get_sweep(sweep)]
  return [(name, os.path.join(workdir, name)) for name in names]


def report(config: str, sweep: str, workdir: str, plot: str | None = None) -> str:
  results = _load("results")
  runs = run_dirs(config, sweep, workdir)
  text = results.table(config, sweep, runs)
  if plot:
    corpus = results.corpus_of(config)
    key = results.KEY_METRIC.get(corpus, "f1_dr")
    runs_read = [(name, results.read_run(path)) for name, path in runs]
    bars = [(name, r.get(key), None if results.other_corpus(corpus, r)
             else results.paper_value(corpus, name, sweep)[0]) for name, r in runs_read]
    try:
      out = results.plot(runs, plot, key=key, bars=bars,
                         title=f"{os.path.basename(config)}: sweep {sweep}")
      text += (f"\n\nPlot: {out} (validation curves per step, where the runs keep them; "
               "test figures beside the paper's)")
    except (ValueError, OSError) as e:  # nothing to draw: the table still stands
      text += f"\n\nPlot: none written to {plot}: {e}"
  return text


def _absolute(config: str, workdir: str) -> tuple[str, str]:
  """The runs start in the repository root: paths given relative to where the launcher
  was called from are made absolute first (a config's `:arg` suffix kept)."""
  path, colon, arg = config.partition(":")
  if os.path.exists(path):
    config = os.path.abspath(path) + colon + arg
  return config, os.path.abspath(workdir)


def check_extra(sweep: str, extra=()) -> None:
  """Refuses an extra `--config.K=V` that sets (or nests in, or holds) a key the sweep
  sets itself: the last flag wins, so every run would get V while its folder's name
  (and the results table) said the sweep's value. absl's `--noconfig.K` (K=False) too."""
  swept = {k for overrides in _sweeps().get_sweep(sweep) for k in overrides}
  for e in extra:
    key = e.lstrip("-").partition("=")[0]
    if key.startswith("noconfig."):
      key = key[len("no"):]
    if not key.startswith("config."):
      continue
    key = key[len("config."):]
    clash = sorted(k for k in swept
                   if k == key or k.startswith(key + ".") or key.startswith(k + "."))
    if clash:
      hint = (" (for the ViT init, set MELDAE_VIT_INIT=PATH: the paper configs read it, "
              "and the ResNet-50 run keeps none)" if "model_init" in clash else "")
      raise ValueError(f"{e}: sweep {sweep!r} sets {', '.join(clash)} itself (its run "
                       "names say which value each run has); drop the flag or pick "
                       f"another sweep{hint}")


def optimizer_groups(config: str):
  """The config's optimizer.groups, read as meldae_jax.main reads `configs/x.py[:arg]`
  (a relative path not found here is the runs', from the repository root)."""
  path, _, arg = config.partition(":")
  full = path if os.path.isabs(path) else os.path.join(ROOT, path)
  if str(ROOT) not in sys.path:  # `from configs import common`, as in the runs (cwd ROOT)
    sys.path.insert(0, str(ROOT))
  try:
    spec = importlib.util.spec_from_file_location("meldae_launch_config", full)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config(arg) if arg else module.get_config()
    return tuple(tuple(g) for g in cfg.optimizer.groups)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"--config={config}: cannot read its optimizer.groups here (the "
                     f"ResNet-50 run takes the rest's learning rate from it): {e}") from e


def sweep_runs(config: str, sweep: str) -> list[dict]:
  """The sweep's overrides for this config: the ResNet-50 ablation takes the learning rate
  of the rest of the model from the config's optimizer.groups."""
  sweeps = _sweeps()
  if sweep in sweeps.USES_GROUPS:
    return sweeps.get_sweep(sweep, optimizer_groups(config))
  return sweeps.get_sweep(sweep)


def commands(config: str, sweep: str, workdir: str, extra=()) -> list[tuple[str, list]]:
  sweeps = _sweeps()
  config, workdir = _absolute(config, workdir)
  out = []
  for overrides in sweep_runs(config, sweep):
    name = sweeps.run_name(overrides)
    args = [sys.executable, "-m", "meldae_jax.main", f"--config={config}",
            f"--workdir={os.path.join(workdir, name)}"]
    args += [f"--config.{k}={v}" for k, v in overrides.items()] + list(extra)
    out.append((name, args))
  return out


def run_one(cmd: list, run_dir: str) -> int:
  """Runs one command and records its exit status in its run folder: the results table
  then says 'failed (exit N)' for a crashed run, not 'running or stopped'."""
  results = _load("results")
  results.write_exit(run_dir, None)  # an earlier try's record: this one is running
  code = subprocess.call(cmd, cwd=ROOT)
  results.write_exit(run_dir, code)
  return code


# The environment the configs read (configs/common.py): passed on to each XManager job.
XM_ENV = ("MELDAE_VIT_INIT", "TFDS_DATA_DIR")


def xm_job_spec(config: str, sweep: str, workdir: str, extra=(), environ=None):
  """(args per run name, env_vars, volumes) of the XManager jobs: the args are the local
  commands' flags as they are (an extra `--config.K V` in two words or `--noconfig.K`
  arrives as given), the config relative to the repository when it is in it (the image
  runs in its copy of it), the XM_ENV variables set here, and every absolute host path
  among the workdir, those variables and the flags' values mounted at the same path
  (the workdir so the runs' results stay on this machine for --results)."""
  environ = os.environ if environ is None else environ
  config, workdir = _absolute(config, workdir)
  runs = commands(config, sweep, workdir, extra)
  path, colon, arg = config.partition(":")
  if os.path.abspath(path).startswith(str(ROOT) + os.sep):
    config = os.path.relpath(path, ROOT) + colon + arg
  args = {name: [f"--config={config}", *cmd[cmd.index("meldae_jax.main") + 2:]]
          for name, cmd in runs}
  env = {k: environ[k] for k in XM_ENV if environ.get(k)}
  values = [workdir, *env.values(), *(e.partition("=")[2] for e in extra),
            *(e for e in extra if not e.startswith("-"))]
  volumes = {}
  for v in values:
    if os.path.isabs(v) and (os.path.exists(v) or v == workdir):
      d = v if os.path.isdir(v) or v == workdir else os.path.dirname(v)
      volumes[d] = d
  return args, env, volumes


# Debian with Python 3.12 (JAX >= 0.11 needs it) and g++ (the CPU custom calls compile on
# first use, meldae_jax/ops/native.py).
XM_BASE_IMAGE = "python:3.12"


def xm_image_steps(dirname: str) -> list[str]:
  """The image's Dockerfile steps: the repository at /<dirname>, installed editable and
  pinned by constraints.txt as `make` installs it (without the test and mkl extras), and
  the runs started there, where their relative `--config=configs/...` paths point.
  XManager stages the repository as `<dirname>/` in the build context."""
  return [
      f"COPY {dirname}/ /{dirname}",
      f"WORKDIR /{dirname}",
      "RUN python -m pip install --no-cache-dir -c constraints.txt -e .",
  ]


def launch_xm(config: str, sweep: str, workdir: str, extra=()) -> None:
  """One XManager experiment, one work unit per sweep point, on this machine (xm_local).

  XManager's python_container builds a Docker image of the repository with
  `xm_image_steps` (its default steps install a `requirements.txt` this repository
  does not have, on a CUDA 11 base image) and runs each job in a container. Into it go:
  the runs' flags, MELDAE_VIT_INIT and TFDS_DATA_DIR when set, and mounts (same path)
  of the workdir and of the absolute paths those and the flags name.
  Not carried: other environment variables (the MELDAE_CPU_* / MELDAE_CBLAS_LIB
  switches, XLA_FLAGS), relative paths in flags (they are the image's), paths not named
  (e.g. the default ~/tensorflow_datasets when TFDS_DATA_DIR is unset), and GPUs (no
  `local_gpu` is requested: the runs train on the CPU). Files the runs write belong to
  the container's user (root in the default image). No exit status is recorded (--run's).
  """
  from xmanager import xm  # pylint: disable=g-import-not-at-top
  from xmanager import xm_local  # pylint: disable=g-import-not-at-top
  args, env, volumes = xm_job_spec(config, sweep, workdir, extra)
  os.makedirs(_absolute(config, workdir)[1], exist_ok=True)  # else docker makes it, root's
  with xm_local.create_experiment(experiment_title=f"meldae-{sweep}") as experiment:
    [executable] = experiment.package([xm.python_container(
        executor_spec=xm_local.Local.Spec(), path=str(ROOT), base_image=XM_BASE_IMAGE,
        docker_instructions=xm_image_steps(ROOT.name),
        entrypoint=xm.ModuleName("meldae_jax.main"))])
    executor = xm_local.Local(docker_options=xm_local.DockerOptions(volumes=volumes))
    for job_args in args.values():
      experiment.add(xm.Job(executable=executable, executor=executor, args=job_args,
                            env_vars=env))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      epilog="Other --config.KEY=VALUE flags are passed on to every run (e.g. "
             "--config.dataset.data_dir=D); the paper configs read the pretrained ViT "
             "from MELDAE_VIT_INIT=PATH.")
  parser.add_argument("--config", required=True)
  parser.add_argument("--sweep", required=True, choices=_sweeps().SWEEPS)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--run", action="store_true", help="run the local commands")
  parser.add_argument("--xm", action="store_true", help="launch with XManager")
  parser.add_argument("--results", action="store_true",
                      help="print the runs' results beside the paper's; run nothing")
  parser.add_argument("--plot", help="with --results or --run: validation curves and test "
                      "figures beside the paper's, to this file (.png unless it says)")
  args, extra = parser.parse_known_args(argv)
  try:
    check_extra(args.sweep, extra)
    runs = [] if args.results else commands(args.config, args.sweep, args.workdir, extra)
    if args.plot:  # before the runs: a bad path would otherwise fail after them
      _load("results").plot_file(args.plot)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if args.results:
    try:
      print(report(args.config, args.sweep, args.workdir, args.plot))
    except ValueError as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
    return 0
  if args.xm:
    try:
      launch_xm(args.config, args.sweep, args.workdir, extra)
      return 0
    except ImportError:
      print("XManager is not installed (pip install xmanager); local commands instead:",
            file=sys.stderr)
  failed = 0
  dirs = dict(run_dirs(args.config, args.sweep, args.workdir))
  for name, cmd in runs:
    print(f"# {name}\n{shlex.join(cmd)}", flush=True)
    if args.run:
      failed += run_one(cmd, dirs[name]) != 0
  if args.run:
    print(report(args.config, args.sweep, args.workdir, args.plot))
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
