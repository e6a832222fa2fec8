"""Neighbour handling of jaxrel.md.simulate: a Verlet list (skin) rebuilt only when an atom has
moved more than half the skin, JAX MD's cell list in a large orthorhombic box, reallocation after
an overflow, and replicas sharded over devices. Every variant must give the trajectory of the
reference search (skin 0, all pairs, rebuilt at every force evaluation) to 1e-10 in float64.

One system serves all tests, so compiled code is shared: 125 argon atoms on a jittered grid in a
16 Å orthorhombic box (at least 3 × (cutoff + skin) = 15 Å on every side, so the cell list
applies) with an untrained one-interaction SchNet (cutoff 4 Å) in float64.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from jaxrel.graph import cell_key, neighbor_list_fn
from jaxrel.md import MDConfig, simulate
from jaxrel.models import ModelConfig, Potential

SKIN = 1.0
N_STEPS = 100
LOG = 25
REFERENCE = dict(skin=0.0, cell_list=False)
CELLS = dict(skin=SKIN, cell_list=True)


def tiny_argon():
    return Potential.create(ModelConfig("schnet", (18,), cutoff=4.0, n_features=4, n_interactions=1, n_rbf=4,
                                        dtype="float64"), {18: -0.1}, 1.0, seed=2)


def argon_box(n=5, side=16.0, seed=0):
    """n³ argon atoms near the sites of a grid in an orthorhombic box of about ``side`` Å."""
    grid = np.stack(np.meshgrid(*[np.arange(n)] * 3, indexing="ij"), -1).reshape(-1, 3)
    positions = (grid + 0.5) * side / n + 0.2 * np.random.default_rng(seed).normal(size=grid.shape)
    return positions, np.full(len(positions), 18), np.diag([side, 1.02 * side, 0.99 * side])


@pytest.fixture(scope="module")
def system():
    potential, params = tiny_argon()
    return potential, params, *argon_box()


def run(system, ensemble="nve", log_every=LOG, velocities=None, **settings):
    potential, params, positions, species, cell = system
    config = MDConfig(ensemble, dt_fs=4.0, temperature_K=300.0, n_steps=N_STEPS, log_every=log_every, seed=1,
                      **settings)
    return simulate(potential, params, positions, species, cell=cell, config=config, velocities=velocities,
                    progress=False)


def assert_same_trajectory(traj, reference, every=1):
    """``traj`` (frames every ``every`` logged frames of ``reference``) equals ``reference``."""
    for field in ("positions", "velocities", "potential_energy_eV", "kinetic_energy_eV", "conserved_eV"):
        np.testing.assert_allclose(getattr(traj, field)[:, ::every], getattr(reference, field),
                                   rtol=0, atol=1e-10, err_msg=field)
    assert traj.stop_reason == reference.stop_reason == [None]


@pytest.fixture(scope="module")
def nve(system):
    """The reference NVE run (frames every 25 steps) and the Verlet + cell-list run (every step)."""
    return run(system, **REFERENCE), run(system, log_every=1, **CELLS)


def test_verlet_and_cell_lists_give_the_reference_nve_trajectory(nve):
    reference, cells = nve
    assert reference.n_rebuilds == N_STEPS and cells.n_rebuilds >= 3   # the lists change along the run
    assert_same_trajectory(cells, reference, every=LOG)


def test_the_verlet_list_is_rebuilt_exactly_when_an_atom_has_moved_more_than_half_the_skin(nve, system):
    """Replaying the criterion on the host from every step's positions gives the same rebuilds:
    the list is rebuilt when an atom stands more than skin/2 from where it was last built, and
    only then (a handful of times in 100 steps, not at every step)."""
    _, cells = nve
    cell = system[-1]
    positions = cells.positions[0]
    built, rebuilds = positions[0], 0
    for x in positions[1:]:
        d = x - built
        frac = d @ np.linalg.inv(cell)
        d = (frac - np.round(frac)) @ cell
        if (d * d).sum(axis=-1).max() > (SKIN / 2) ** 2:
            built, rebuilds = x, rebuilds + 1
    assert 3 <= rebuilds <= N_STEPS // 5
    assert cells.n_rebuilds == rebuilds


def test_the_cell_list_finds_the_pairs_of_the_all_pairs_search_only_in_an_orthorhombic_box(system):
    potential, _, positions, _, cell = system
    radius = potential.config.cutoff + SKIN
    pairs = {}
    for cell_list in (False, True):
        _, neighbor_fn = neighbor_list_fn(radius, cell_key(cell), 1.25, "float64", cell_list=cell_list)
        nbrs = neighbor_fn.allocate(np.mod(positions, np.diag(cell)))
        assert (nbrs.cell_list_capacity is not None) == cell_list
        idx = np.asarray(nbrs.idx)
        pairs[cell_list] = set(map(tuple, idx[:, idx[0] < len(positions)].T.tolist()))
    assert len(pairs[False]) > 10 * len(positions) and pairs[True] == pairs[False]
    sheared = cell.copy()
    sheared[1, 0] = 1.0
    with pytest.raises(ValueError, match="orthorhombic"):
        neighbor_list_fn(radius, cell_key(sheared), cell_list=True)


def test_an_overflowing_cell_list_is_reallocated_and_the_trajectory_is_unchanged(nve, system):
    """The atoms within 6 Å of the box centre converge on it: a rebuild finds more atoms per cell
    (and pairs) than the lists allocated at the start hold, the block is redone with larger
    lists, and the trajectory stays the reference search's."""
    _, _, positions, _, cell = system
    inwards = np.diag(cell) / 2 - positions
    distance = np.linalg.norm(inwards, axis=1, keepdims=True)
    velocities = np.where(distance < 6.0, 0.005 * inwards / distance, 0.0)    # Å/fs
    reference = run(system, velocities=velocities, **REFERENCE)
    cells = run(system, velocities=velocities, **CELLS)
    assert cells.n_reallocations >= 1 and reference.n_reallocations == 0
    assert_same_trajectory(cells, reference)


SUBPROCESS_SCRIPT = textwrap.dedent("""
    import dataclasses, json, sys
    import jax
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_disable_most_optimizations", True)
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    from test_md_neighbours import argon_box, tiny_argon
    from jaxrel.md import MDConfig, simulate
    potential, params = tiny_argon()
    positions, species, cell = argon_box(n=2, side=8.5)
    starts = positions + 0.05 * np.random.default_rng(1).normal(size=(6, *positions.shape))
    verlet = MDConfig("nvt-langevin", dt_fs=4.0, temperature_K=300.0, n_steps=100, log_every=25, seed=3, skin=1.0,
                      capacity_multiplier=10.0)    # a few pairs per box: ample lists, no recompilation
    reference = simulate(potential, params, starts, species, cell=cell, config=dataclasses.replace(verlet, skin=0.0),
                         progress=False)
    sharded = simulate(potential, params, starts, species, cell=cell, config=verlet, progress=False, n_devices=4)
    fields = ("positions", "velocities", "potential_energy_eV", "kinetic_energy_eV", "conserved_eV")
    print(json.dumps({"devices": len(jax.devices()), "shape": sharded.positions.shape,
                      "rebuilds": [reference.n_rebuilds, sharded.n_rebuilds],
                      "stop_reasons": [reference.stop_reason, sharded.stop_reason],
                      "error": max(float(np.abs(getattr(reference, f) - getattr(sharded, f)).max()) for f in fields)}))
""")


@pytest.fixture(scope="module", autouse=True)
def langevin_replicas():
    """Six replicas of 8 argon atoms (an 8.5 Å box, too small for a cell list) under Langevin
    dynamics, in a fresh process with 4 forced host devices (XLA_FLAGS must be set before jax is
    imported): the reference search on one device, and a Verlet list (skin 1 Å) with the replicas
    sharded over the 4 devices (padded to 8, the padding dropped). The process starts with the
    module, so that it compiles while the other tests run; ``wait()`` returns its result."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    process = subprocess.Popen([sys.executable, "-c", SUBPROCESS_SCRIPT, os.path.dirname(__file__)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    result = {}

    def wait() -> dict:
        if not result:
            stdout, stderr = process.communicate(timeout=300)
            assert process.returncode == 0, stderr[-3000:]
            result.update(json.loads(stdout.strip().splitlines()[-1]))
        return result

    yield wait
    if process.poll() is None:
        process.kill()
        process.communicate()


def test_langevin_replicas_on_a_verlet_list_sharded_over_four_devices_give_the_one_device_reference(
        langevin_replicas):
    """BAOAB draws its noise inside the step, so a step redone after a rebuild must replay it;
    rebuilds are decided for all replicas together, across the devices."""
    result = langevin_replicas()
    assert result["devices"] == 4 and result["shape"] == [6, 5, 8, 3]
    assert result["stop_reasons"] == [[None] * 6] * 2
    assert result["rebuilds"][0] == 100 and 0 < result["rebuilds"][1] <= 20
    assert result["error"] < 1e-10


def test_more_devices_than_jax_has_is_a_clear_error(system):
    potential, params, positions, species, cell = system
    with pytest.raises(ValueError, match="--devices is 64"):
        simulate(potential, params, positions, species, cell=cell, n_devices=64, progress=False)
