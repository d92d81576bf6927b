"""Device mesh, logical-axis rules -> shardings, and global batches.

The mesh has two axes, `data` and `fsdp`, with explicit (Auto) axis types. Parameters
annotated by the model with logical axis names (`nn.with_logical_partitioning`) are sharded
by the config's rules (e.g. `embed -> 'fsdp'`); unannotated parameters are replicated. A
dimension that the mapped mesh axes do not divide stays replicated (logged), so any model
size runs on any mesh. Batches are split over `('data', 'fsdp')` (the `batch` rule).
"""
from __future__ import annotations

import math
import os
from typing import Any, Sequence

from absl import logging
import flax.linen as nn
import jax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
import numpy as np

MESH_AXES = ("data", "fsdp")


# ----------------------------------------------------------------------------------------
# Multi-process.
# ----------------------------------------------------------------------------------------


def maybe_initialize_distributed(cfg=None) -> None:
  """`jax.distributed.initialize()` when launched as one of several processes.

  Multi-process is recognised by `config.distributed` (coordinator_address, num_processes,
  process_id) or by the environment variables JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
  JAX_PROCESS_ID (what a launcher sets); on clusters JAX's own auto-detection (SLURM, TPU
  pods, ...) is used when `distributed.auto` is set.
  """
  d = cfg.get("distributed", None) if cfg is not None else None
  addr = (d.get("coordinator_address") if d else None) or os.environ.get("JAX_COORDINATOR_ADDRESS")
  nproc = (d.get("num_processes") if d else None) or os.environ.get("JAX_NUM_PROCESSES")
  pid = d.get("process_id") if d else None
  if pid is None or pid < 0:
    pid = os.environ.get("JAX_PROCESS_ID")
  if jax.distributed.is_initialized():
    return
  if addr and nproc and int(nproc) > 1:
    if pid is None:
      raise ValueError(f"{nproc} processes at {addr}, but not which one this is: set "
                       "config.distributed.process_id or JAX_PROCESS_ID (0 .. "
                       f"{int(nproc) - 1})")
    logging.info("jax.distributed.initialize(%s, num_processes=%s, process_id=%s)", addr, nproc, pid)
    jax.distributed.initialize(coordinator_address=addr, num_processes=int(nproc),
                               process_id=int(pid))
  elif d and d.get("auto", False):
    jax.distributed.initialize()


# ----------------------------------------------------------------------------------------
# Mesh.
# ----------------------------------------------------------------------------------------


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, int]:
  """Resolves (data, fsdp) sizes; one of them may be -1 = all remaining devices."""
  sizes = [int(mesh_cfg.get(a, -1)) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f"At most one mesh axis may be -1, got {dict(zip(MESH_AXES, sizes))}.")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(f"{num_devices} devices do not split into mesh {sizes}.")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(f"Mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                     f"have {num_devices}.")
  return tuple(sizes)


def make_mesh(mesh_cfg, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  devices = list(devices) if devices is not None else jax.devices()
  shape = mesh_shape(mesh_cfg, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def rules(cfg) -> tuple[tuple[str, Any], ...]:
  """Logical-axis rules from the config as a tuple of (name, mesh axes or None)."""
  out = []
  for name, target in cfg.logical_axis_rules:
    if isinstance(target, list):
      target = tuple(target)
    out.append((name, target))
  return tuple(out)


# ----------------------------------------------------------------------------------------
# Shardings of a (boxed) abstract pytree.
# ----------------------------------------------------------------------------------------


def _axes_size(mesh, axes) -> int:
  if axes is None:
    return 1
  if isinstance(axes, str):
    axes = (axes,)
  return math.prod(mesh.shape[a] for a in axes)


def _fit_spec(spec: P, shape, mesh, name="") -> P:
  """Drops mesh axes from dims they do not divide (those dims are then replicated)."""
  dims = list(spec) + [None] * (len(shape) - len(spec))
  out = []
  for d, (axes, size) in enumerate(zip(dims, shape)):
    if axes is not None and size % _axes_size(mesh, axes):
      logging.info("Replicating dim %d (size %d) of %s: not divisible by mesh axes %s.",
                   d, size, name or "a parameter", axes)
      axes = None
    out.append(axes)
  while out and out[-1] is None:
    out.pop()
  return P(*out)


def logical_shardings(boxed_tree, mesh, logical_rules):
  """NamedSharding for every leaf of an abstract tree that may hold `nn.Partitioned` boxes.

  Returns a tree with the structure of the *unboxed* tree (`nn.meta.unbox(boxed_tree)`).
  """
  is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)

  def one(path, leaf):
    if isinstance(leaf, nn.Partitioned):
      spec = nn.logical_to_mesh_axes(leaf.names, logical_rules)
      shape = leaf.value.shape
    else:
      spec, shape = P(), getattr(leaf, "shape", ())
    spec = _fit_spec(spec if spec is not None else P(), shape, mesh, jax.tree_util.keystr(path))
    return NamedSharding(mesh, spec)

  return jax.tree_util.tree_map_with_path(one, boxed_tree, is_leaf=is_box)


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh, logical_rules) -> NamedSharding:
  """Sharding of the batch axis (rule 'batch'), other axes replicated."""
  spec = nn.logical_to_mesh_axes(("batch",), logical_rules)
  return NamedSharding(mesh, spec if spec is not None else P())


def global_batch_size_ok(global_batch: int, mesh, logical_rules,
                         name: str = "batch_size") -> None:
  """A ValueError naming the setting `name` if its batch does not split over the shards."""
  n = _axes_size(mesh, batch_sharding(mesh, logical_rules).spec[0]
                 if batch_sharding(mesh, logical_rules).spec else None)
  if global_batch % n:
    raise ValueError(f"Global batch {global_batch} ({name}) is not divisible by the {n} "
                     f"batch shards of mesh {dict(mesh.shape)}.")


def check_batch_split_over_processes(mesh, logical_rules) -> None:
  """A ValueError if the batch rule leaves the batch replicated over processes.

  Every process feeds its own `batch_size / process_count` windows (`make_global_batch`);
  where the batch axis is replicated over several processes, their different windows
  would silently make up one "replicated" global batch of the per-process size.
  """
  if jax.process_count() == 1:
    return
  sh = batch_sharding(mesh, logical_rules)
  n = _axes_size(mesh, sh.spec[0] if sh.spec else None)
  owner: dict[tuple, int] = {}
  for device, index in sh.devices_indices_map((n,)).items():
    key = (index[0].start, index[0].stop) if index else (None, None)
    other = owner.setdefault(key, device.process_index)
    if other != device.process_index:
      raise ValueError(
          f"The 'batch' rule {sh.spec[0] if sh.spec else None!r} does not split the batch "
          f"over the {jax.process_count()} processes of mesh {dict(mesh.shape)}: "
          f"processes {other} and {device.process_index} would hold the same rows but "
          "read different data. Map 'batch' to mesh axes that span the processes (e.g. "
          "('data', 'fsdp')).")


def make_global_batch(local_batch: dict[str, np.ndarray], sharding: NamedSharding):
  """Assembles the global batch from this process's slice (leading axis = batch)."""
  def one(x):
    x = np.asarray(x)
    return jax.make_array_from_process_local_data(
        NamedSharding(sharding.mesh, P(*sharding.spec[:1])), x)
  return jax.tree.map(one, local_batch)


def to_host(tree):
  """Host numpy copies of a pytree of arrays, whole on every process.

  `jax.device_get` refuses an array sharded over devices of other processes (e.g. FSDP
  parameters of a multi-process run); those are all-gathered first (a collective: every
  process must call this with the same tree).
  """
  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return jax.device_get(x)
  return jax.tree.map(one, tree)


def any_process(flag: bool) -> bool:
  """Whether `flag` holds on some process (a collective: all processes must call it)."""
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.max(multihost_utils.process_allgather(np.int32(bool(flag)))))


def all_processes_agree(flag: bool) -> bool:
  """Whether `flag` holds on every process (a collective: all processes must call it)."""
  return not any_process(not flag)


def local_batch_size(global_batch: int) -> int:
  if global_batch % jax.process_count():
    raise ValueError(f"Global batch {global_batch} not divisible by {jax.process_count()} processes.")
  return global_batch // jax.process_count()
