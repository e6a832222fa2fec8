"""Devices for batched work: a mesh over the leading axis (frames, replicas, examples).

jaxrel batches independent items along a leading axis: frames of one size class
(explanation, audit, evaluation), the examples of a training batch, MD replicas.
:func:`batch_mesh` is a one-axis ``jax.sharding.Mesh`` over the chosen devices and
:func:`shard_leading` places that axis across it (``NamedSharding(mesh, P("batch"))``);
a jitted function then runs each device's share, and the results equal a one-device
run (tested on forced host devices, ``XLA_FLAGS=--xla_force_host_platform_device_count=4``).
Inside a jitted function :func:`constrain_leading` asks for the same split of an array
the function made (a training batch gathered from the replicated data set).
The leading axis must be a multiple of the device count: :func:`pad_leading` repeats
the last item, and callers drop the padded results or give them weight 0.

Several processes (one per host, each with its local devices) form one run after
:func:`initialize` (``jax.distributed``): the mesh then spans every process's devices,
every process holds the same host data and runs the same program, :func:`shard_leading`
and :func:`replicate` place each process's own shards, and :func:`gather` returns the
global result to every process. On CPUs the processes talk through gloo.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.extend.backend import clear_backends
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "batch"


def initialize(processes: int = 1, process_id: int = 0, coordinator: str | None = None, *,
               timeout_s: int = 300) -> None:
    """Join a run of several processes (``jax.distributed.initialize``); nothing for one process.

    Every process of the run calls it with the same ``processes`` and ``coordinator`` and its
    own ``process_id``, before it creates any array; ``jax.devices()`` then lists the devices
    of every process and ``jax.local_devices()`` its own. Importing jaxrel already starts
    JAX's backend (jax_md computes at import), so the backend is restarted
    (``jax.extend.backend.clear_backends``) before the run is joined. Cross-process
    collectives on CPUs use gloo (``jax_cpu_collectives_implementation``). Calling it again
    with the same values does nothing.

    Args:
        processes: the number of processes (hosts) of the run, at least 1.
        process_id: this process's number, 0 … ``processes`` − 1; process 0 runs the coordinator.
        coordinator: ``HOST:PORT`` where process 0 listens (e.g. ``node0:1234``); needed for
            more than one process.
        timeout_s: seconds to wait for every process to join.

    Raises:
        ValueError: a count below 1, a ``process_id`` outside 0 … ``processes`` − 1, a missing
            or malformed ``coordinator``, or a process already joined to another run.
        ConnectionError: the processes did not all join within ``timeout_s``.
    """
    if not (isinstance(processes, (int, np.integer)) and processes >= 1):
        raise ValueError(f"processes (--processes) is {processes}; give the number of processes of the run "
                         "(one per host), 1 or more")
    if not (isinstance(process_id, (int, np.integer)) and 0 <= process_id < processes):
        raise ValueError(f"process_id (--process-id) is {process_id}, but a run of {processes} process(es) "
                         f"numbers them 0 to {processes - 1}; give each process its own number")
    if processes == 1:
        return
    if coordinator is None:
        raise ValueError(f"coordinator (--coordinator) is missing; a run of {processes} processes needs "
                         "HOST:PORT of process 0 on every process, e.g. --coordinator node0:1234")
    host, _, port = coordinator.rpartition(":")
    if not (host and port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"coordinator (--coordinator) is {coordinator!r}; give HOST:PORT of process 0, "
                         "e.g. node0:1234")
    if jax.distributed.is_initialized():
        if (jax.process_count(), jax.process_index()) != (processes, process_id):
            raise ValueError(f"this Python process already runs as process {jax.process_index()} of "
                             f"{jax.process_count()}; start a new one to join a run of {processes} as "
                             f"process {process_id}")
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    clear_backends()
    try:
        jax.distributed.initialize(coordinator, int(processes), int(process_id), initialization_timeout=timeout_s)
    except Exception as err:
        raise ConnectionError(f"process {process_id} of {processes} could not join the run at {coordinator} "
                              f"within {timeout_s} s ({type(err).__name__}); start every process with the same "
                              "--processes and --coordinator, a distinct --process-id, and a port process 0 "
                              "can open") from err


def select_devices(n_devices: int | None = None) -> list:
    """The first ``n_devices`` local devices of every process, in process order.

    In one process these are the first ``n_devices`` of ``jax.devices()``; in a run of P
    processes (:func:`initialize`) P × ``n_devices`` devices.

    Args:
        n_devices: devices per process; None = all of each process's local devices.

    Raises:
        ValueError: ``n_devices`` < 1 or more than this process has.
    """
    local = jax.local_devices()
    if n_devices is None:
        n_devices = len(local)
    if not (isinstance(n_devices, (int, np.integer)) and 1 <= n_devices <= len(local)):
        have = f"{len(local)} {local[0].platform} device(s)"
        have = f"this process has {have}" if jax.process_count() > 1 else f"{have} are available"
        raise ValueError(f"--devices is {n_devices}, but {have}; give 1 to {len(local)} (on a CPU, "
                         "XLA_FLAGS=--xla_force_host_platform_device_count=N set before jax is imported gives "
                         "N host devices)")
    by_process: dict[int, list] = {}
    for device in jax.devices():
        by_process.setdefault(device.process_index, []).append(device)
    return [d for p in sorted(by_process) for d in by_process[p][:n_devices]]


def batch_mesh(n_devices: int | None = None) -> Mesh:
    """A one-axis mesh named ``"batch"`` over :func:`select_devices` (``n_devices`` per process)."""
    return Mesh(np.array(select_devices(n_devices)), (AXIS,))


def padded_size(n: int, mesh: Mesh) -> int:
    """``n`` rounded up to a multiple of the mesh's device count."""
    return -(-n // mesh.size) * mesh.size


def pad_leading(tree, size: int):
    """Every leaf's leading axis extended to ``size`` by repeating its last item."""
    def pad(leaf):
        extra = size - leaf.shape[0]
        if extra <= 0:
            return leaf
        xp = jnp if isinstance(leaf, jax.Array) else np
        return xp.concatenate([leaf, xp.repeat(leaf[-1:], extra, axis=0)])
    return jax.tree.map(pad, tree)


def _place(tree, sharding: NamedSharding):
    """``tree`` on ``sharding``: ``jax.device_put`` in one process; with several, each process
    puts its own shards from its host copy (which every process must hold alike)."""
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def place(leaf):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            return jax.device_put(leaf, sharding)
        host = np.asarray(leaf)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
    return jax.tree.map(place, tree)


def shard_leading(tree, mesh: Mesh):
    """``tree`` on ``mesh`` with every leaf's leading axis split over the devices.

    Raises:
        ValueError: a leading axis that is not a multiple of the device count (pad it
            with :func:`pad_leading` first).
    """
    for leaf in jax.tree.leaves(tree):
        if leaf.shape[0] % mesh.size:
            raise ValueError(f"a leading axis of {leaf.shape[0]} items does not split over {mesh.size} devices; "
                             "pad it with jaxrel.parallel.pad_leading")
    return _place(tree, NamedSharding(mesh, PartitionSpec(AXIS)))


def constrain_leading(tree, mesh: Mesh):
    """Inside ``jax.jit``: ``tree`` with every leaf's leading axis split over ``mesh``'s devices
    (``jax.lax.with_sharding_constraint``); each leading axis must be a multiple of ``mesh.size``."""
    return jax.lax.with_sharding_constraint(tree, NamedSharding(mesh, PartitionSpec(AXIS)))


def replicate(tree, mesh: Mesh):
    """``tree`` copied onto every device of ``mesh`` (params, shared inputs)."""
    return _place(tree, NamedSharding(mesh, PartitionSpec()))


def gather(tree):
    """Every leaf as a NumPy array of its global value, on every process
    (``multihost_utils.process_allgather`` for arrays split over several processes)."""
    def fetch(leaf):
        if isinstance(leaf, jax.Array) and not (leaf.is_fully_addressable or leaf.is_fully_replicated):
            return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
        return np.asarray(leaf)
    return jax.tree.map(fetch, tree)
