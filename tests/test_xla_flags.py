"""The project's XLA flags: appended to $XLA_FLAGS, never overriding the user's."""
from meldae_jax import xla_flags

FLAGS = ("--xla_a=1", "--xla_b=")


def test_appends_missing_flags():
  env = {}
  assert xla_flags.apply(FLAGS, env) == "--xla_a=1 --xla_b="
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  assert xla_flags.apply(FLAGS, env).split() == [
      "--xla_force_host_platform_device_count=8", "--xla_a=1", "--xla_b="]


def test_user_setting_wins_and_opt_out():
  env = {"XLA_FLAGS": "--xla_a=0"}
  assert xla_flags.apply(FLAGS, env).split() == ["--xla_a=0", "--xla_b="]
  env = {"XLA_FLAGS": "--xla_x=1", "MELDAE_XLA_FLAGS": "0"}
  assert xla_flags.apply(FLAGS, env) == "--xla_x=1"
  assert xla_flags.apply(FLAGS, {"MELDAE_XLA_FLAGS": "0"}) == ""
