"""Device mesh, logical-axis sharding rules and global batch assembly.

The mesh has three axes, sized by `config.mesh` (`data`, `fsdp`, `tensor`; one of them may be -1 to take
the remaining devices):
  * data   - pure data parallelism (parameters replicated);
  * fsdp   - data parallelism with parameters and optimizer state sharded (ZeRO-3 style);
  * tensor - model parallelism inside matrices.
The batch is split over (data, fsdp). Every parameter carries logical axis names (see `sedd_jax.models`);
`config.mesh.rules` maps each name to a mesh axis (or None = replicated). A dimension that the mapped mesh
axis does not divide is replicated instead (e.g. the 50258-row vocabulary over 4 tensor shards).

Multi-host: every host runs the same program; `initialize_processes` joins them (jax.distributed), each host
reads its own slice of every batch and `global_batch` assembles the per-host arrays into one global array.
"""

from __future__ import annotations

import math
import os
from typing import Any

import flax
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Environment variables of launchers whose cluster jax.distributed.initialize() detects by itself.
CLUSTER_ENVIRONMENT = ("TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS", "JAX_COORDINATOR_ADDRESS",
                       "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


def initialize_processes(coordinator_address: str | None = None, num_processes: int | None = None,
                         process_id: int | None = None, distributed: bool | None = None,
                         heartbeat_timeout: int = 100) -> bool:
    """Joins the processes of a multi-process run with `jax.distributed.initialize`; returns whether it did.

    Explicit: `coordinator_address` ("host:port" of process 0), `num_processes` and `process_id` together.
    Otherwise, with `distributed` True, or None and a cluster environment detected (TPU VM pod slice, SLURM,
    Open MPI), jax finds them itself. A process that stops sending heartbeats for `heartbeat_timeout` seconds
    (killed, lost host) makes the others stop with an error instead of waiting forever. Must be called
    before anything else touches jax's devices."""
    import jax

    explicit = {"--coordinator_address": coordinator_address, "--num_processes": num_processes,
                "--process_id": process_id}
    given = [name for name, value in explicit.items() if value is not None]
    if given and len(given) < 3:
        missing = [name for name in explicit if name not in given]
        raise ValueError(f"{', '.join(given)} given without {', '.join(missing)}: a multi-process run needs all "
                         "three, e.g. --coordinator_address=10.0.0.1:1234 --num_processes=2 --process_id=0 "
                         "(or none of them where the cluster is detected: TPU VM pod slices, SLURM)")
    if heartbeat_timeout < 1:
        raise ValueError(f"--heartbeat_timeout must be >= 1 second, got {heartbeat_timeout}")
    if given:
        host, _, port = str(coordinator_address).rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--coordinator_address={coordinator_address!r} is not host:port (e.g. 10.0.0.1:1234)")
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise ValueError(f"--process_id={process_id} must be in [0, --num_processes={num_processes})")
        if distributed is False:
            raise ValueError("--nodistributed contradicts --coordinator_address/--num_processes/--process_id")
        jax.distributed.initialize(coordinator_address, num_processes, process_id,
                                   heartbeat_timeout_seconds=heartbeat_timeout)
        return True
    if distributed is None:
        distributed = any(name in os.environ for name in CLUSTER_ENVIRONMENT)
    if distributed:
        jax.distributed.initialize(heartbeat_timeout_seconds=heartbeat_timeout)
    return bool(distributed)


def mesh_shape(config, device_count: int | None = None) -> tuple[int, int, int]:
    """Resolves `config.mesh.{data,fsdp,tensor}` (one may be -1) against the device count."""
    device_count = jax.device_count() if device_count is None else device_count
    sizes = [int(config.mesh[axis]) for axis in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one of mesh.data/fsdp/tensor may be -1, got {dict(zip(MESH_AXES, sizes))}")
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh sizes must be positive or -1, got {dict(zip(MESH_AXES, sizes))}")
    fixed = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if device_count % fixed:
            raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))}: the fixed axes ({fixed} devices) do not divide "
                             f"the {device_count} available devices")
        sizes[sizes.index(-1)] = device_count // fixed
    if math.prod(sizes) != device_count:
        raise ValueError(
            f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} = {math.prod(sizes)} devices, but "
            f"{device_count} are available; set --config.mesh.data/fsdp/tensor so the product is {device_count} "
            "(or use -1 for one axis)")
    return tuple(sizes)


def create_mesh(config, devices=None) -> Mesh:
    """The (data, fsdp, tensor) mesh over `devices` (default: all of jax's), laid out along a TPU slice's
    torus where there is one (`mesh_utils.create_device_mesh`; CPU and GPU devices keep their order)."""
    devices = jax.devices() if devices is None else list(devices)
    shape = mesh_shape(config, len(devices))
    return Mesh(mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True), MESH_AXES)


def logical_rules(config) -> tuple[tuple[str, str | None], ...]:
    return tuple((name, axis) for name, axis in config.mesh.rules)


def _spec_for(names: tuple[str | None, ...], shape: tuple[int, ...], rules: dict, mesh: Mesh) -> PartitionSpec:
    axes = []
    used = set()
    for name, size in zip(names, shape):
        axis = rules.get(name)
        if axis is None or axis in used or size % mesh.shape[axis]:
            axes.append(None)
        else:
            axes.append(axis)
            used.add(axis)
    return PartitionSpec(*axes)


def param_shardings(boxed_params: Any, mesh: Mesh, rules) -> Any:
    """NamedShardings for a tree of `flax.core.meta.Partitioned` abstract params (from `jax.eval_shape`)."""
    rules = dict(rules)
    missing = {n for p in jax.tree.leaves(boxed_params, is_leaf=_is_boxed) if _is_boxed(p)
               for n in p.names if n not in rules}
    if missing:
        raise ValueError(f"config.mesh.rules has no entry for logical axes {sorted(missing)}")

    def sharding(p):
        if not _is_boxed(p):
            return NamedSharding(mesh, PartitionSpec())
        return NamedSharding(mesh, _spec_for(p.names, p.value.shape, rules, mesh))

    return jax.tree.map(sharding, boxed_params, is_leaf=_is_boxed)


def _is_boxed(x) -> bool:
    return isinstance(x, flax.core.meta.Partitioned)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batch axis split over (data, fsdp); sequence axis whole."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def batch_shards(mesh: Mesh) -> int:
    """How many parts the batch axis is split into: mesh.data x mesh.fsdp."""
    return math.prod(mesh.shape[axis] for axis in BATCH_AXES)


def global_batch(local_batch: np.ndarray, mesh: Mesh) -> jax.Array:
    """This host's rows `[B / process_count, L]` -> the global `[B, L]` array sharded over (data, fsdp)."""
    return jax.make_array_from_process_local_data(batch_sharding(mesh), local_batch)


def check_sharded(params: Any, mesh: Mesh) -> dict:
    """Verifies that parameters are really split over the fsdp/tensor axes when those are > 1.

    Returns {"total_bytes", "per_device_bytes", "ratio"}; raises RuntimeError when the per-device footprint
    is not below the total (parameters silently replicated)."""
    total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
    per_device = sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(params))
    model_shards = mesh.shape["fsdp"] * mesh.shape["tensor"]
    if model_shards > 1 and per_device >= total:
        raise RuntimeError(
            f"parameters are not sharded: {per_device} bytes per device of {total} with fsdp x tensor = "
            f"{model_shards}; check config.mesh.rules")
    return {"total_bytes": total, "per_device_bytes": per_device, "ratio": per_device / max(total, 1)}
