"""XManager-style launcher for MELDAE-JAX sweeps; falls back to local commands.

  python launch/launch.py --config=configs/wdmd.py --sweep=ablations --workdir=/tmp/abl
  python launch/launch.py --config=configs/synthetic.py:easy --sweep=loc_loss \
      --workdir=/tmp/loss --run            # run the local commands one after another
  python launch/launch.py ... --xm         # XManager (xm_local), when it is installed

Without `--xm` (or without XManager installed) it prints one `python -m meldae_jax.main`
command per run of the sweep (see launch/sweeps.py); `--run` executes them. It does not
import the project, and XManager only inside `launch_xm`.
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


def _sweeps():
  spec = importlib.util.spec_from_file_location("meldae_sweeps", HERE / "sweeps.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _absolute(config: str, workdir: str) -> tuple[str, str]:
  """The runs start in the repository root: paths given relative to where the launcher
  was called from are made absolute first (a config's `:arg` suffix kept)."""
  path, colon, arg = config.partition(":")
  if os.path.exists(path):
    config = os.path.abspath(path) + colon + arg
  return config, os.path.abspath(workdir)


def commands(config: str, sweep: str, workdir: str, extra=()) -> list[tuple[str, list]]:
  sweeps = _sweeps()
  config, workdir = _absolute(config, workdir)
  out = []
  for overrides in sweeps.get_sweep(sweep):
    name = sweeps.run_name(overrides)
    args = [sys.executable, "-m", "meldae_jax.main", f"--config={config}",
            f"--workdir={os.path.join(workdir, name)}"]
    args += [f"--config.{k}={v}" for k, v in overrides.items()] + list(extra)
    out.append((name, args))
  return out


def launch_xm(config: str, sweep: str, workdir: str, extra=()) -> None:
  """One XManager experiment, one work unit per sweep point (local executor)."""
  from xmanager import xm  # pylint: disable=g-import-not-at-top
  from xmanager import xm_local  # pylint: disable=g-import-not-at-top
  sweeps = _sweeps()
  config, workdir = _absolute(config, workdir)
  with xm_local.create_experiment(experiment_title=f"meldae-{sweep}") as experiment:
    [executable] = experiment.package([xm.python_container(
        executor_spec=xm_local.Local.Spec(), path=str(ROOT),
        entrypoint=xm.ModuleName("meldae_jax.main"))])
    for overrides in sweeps.get_sweep(sweep):
      args = {"config": config,
              "workdir": os.path.join(workdir, sweeps.run_name(overrides)),
              **{f"config.{k}": v for k, v in overrides.items()}}
      for e in extra:
        k, _, v = e.lstrip("-").partition("=")
        args[k] = v
      experiment.add(xm.Job(executable=executable, executor=xm_local.Local(), args=args))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--sweep", required=True, help="loc_loss | ablations | seeds")
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--run", action="store_true", help="run the local commands")
  parser.add_argument("--xm", action="store_true", help="launch with XManager")
  args, extra = parser.parse_known_args(argv)
  if args.xm:
    try:
      launch_xm(args.config, args.sweep, args.workdir, extra)
      return 0
    except ImportError:
      print("XManager is not installed (pip install xmanager); local commands instead:",
            file=sys.stderr)
  failed = 0
  for name, cmd in commands(args.config, args.sweep, args.workdir, extra):
    print(f"# {name}\n{shlex.join(cmd)}", flush=True)
    if args.run:
      failed += subprocess.call(cmd, cwd=ROOT) != 0
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
