"""Molecular dynamics with a jaxrel potential: NVE, Nosé–Hoover chain NVT and Langevin NVT.

Integrators and neighbour lists are JAX MD's (Schoenholz & Cubuk 2020, arXiv:1912.04232):

* ``"nve"``: velocity Verlet (Swope, Andersen, Berens & Wilson 1982, J. Chem. Phys. 76,
  637, DOI 10.1063/1.442716), ``jax_md.simulate.nve``. Its energy error is O(dt²).
* ``"nvt-nh"``: a Nosé–Hoover chain of 5 thermostats (Martyna, Klein & Tuckerman 1992,
  J. Chem. Phys. 97, 2635, DOI 10.1063/1.463940) integrated as in Martyna, Tuckerman,
  Tobias & Klein 1996 (Mol. Phys. 87, 1117, DOI 10.1080/00268979600100761),
  ``jax_md.simulate.nvt_nose_hoover``. It conserves the extended energy
  H' = E_pot + E_kin + Σ_k p_ξk²/(2 Q_k) + N_f k_B T ξ_1 + k_B T Σ_{k>1} ξ_k
  (``jax_md.simulate.nvt_nose_hoover_invariant``).
* ``"nvt-langevin"``: the BAOAB splitting (Leimkuhler & Matthews 2013, Appl. Math. Res.
  Express 2013, 34, DOI 10.1093/amrx/abs010), ``jax_md.simulate.nvt_langevin``. Nothing
  is conserved; the trajectory reports E_pot + E_kin.

Initial velocities are drawn from the Maxwell–Boltzmann distribution at
``MDConfig.temperature_K`` with the total momentum removed. Temperatures are
T = 2 E_kin / (N_f k_B) with N_f = 3 n_atoms, JAX MD's count (the thermostats target the
same), so Maxwell–Boltzmann velocities without total momentum start, on average, at
(n_atoms − 1)/n_atoms of the target.

Instability. After every block the host marks a replica unstable, and freezes it, when its
positions, forces or energies are not finite or it is too hot. Too hot means a temperature
above ``MDConfig.temperature_limit_K``, and, in the ensembles with a conserved quantity H
(:data:`CONSERVING`: E_pot + E_kin for nve, H' for nvt-nh), also

    ``|H(t) − H(0)| > ½ (E_kin(t) − E_kin(0))``      (:data:`ENERGY_ERROR_FRACTION` = ½)

A run can heat legitimately: a cold start far from a minimum turns potential energy into
kinetic energy with H unchanged, and a trained model is judged on its structures
(:mod:`jaxrel.stability`: bonds, atom collapse), not on the driver's thermometer. An
integrator that blows up creates its kinetic energy out of the integration error, so H
moves by about as much as E_kin rises, while a stable one keeps ``|ΔH|`` at its O(dt²) error,
about 1e-3 of the energy it exchanges (the tests' bound). The rule calls the heating
unstable when more than half of the kinetic energy gained was not paid for by the
potential energy (or, nvt-nh, the thermostat), which leaves a wide margin on both sides.
Langevin dynamics has no conserved quantity and keeps the plain limit.

Neighbour lists (``jax_md.partition``, sparse). With ``MDConfig.skin`` s > 0 (default: 0.5 Å where
the cell list applies, 0 elsewhere, see :data:`AUTO_SKIN_A`) the
list is a Verlet list (Verlet 1967, Phys. Rev. 159, 98, DOI 10.1103/PhysRev.159.98): it holds
the pairs within r_c + s of its reference positions, so it holds every pair within r_c as
long as no atom has moved more than s/2 from them. Each step integrates with the current
list; if an atom of a stable replica now stands more than s/2 from the reference, the list
of every replica is rebuilt at the new positions and the step is redone with it (the new
positions do not depend on the forces they are evaluated at, in all three integrators, so
the redo moves the atoms to the same place and only the forces change). The list therefore
always covers the positions the forces are evaluated at, edges longer than r_c are masked
(:func:`jaxrel.graph.graph_from_neighbors` with ``cutoff``), and the model sees exactly the
pairs within r_c: the trajectory equals a run that searches all pairs at every force
evaluation, up to the order in which edge terms are summed (1e-10 over hundreds of float64
steps, tested). A rebuild costs one search and one extra step; between rebuilds a step costs
the model on r_c + s lists ((1 + s/r_c)³ more edges) and an O(n) displacement check. With
s = 0 the list is rebuilt inside every energy and force evaluation (jaxrel's behaviour
before the skin existed). The search is O(n²) over all pairs, or, in an orthorhombic periodic
box of at least 3 × (r_c + s) on every side, JAX MD's O(n) cell list (Allen & Tildesley,
*Computer Simulation of Liquids*, 1987; ``MDConfig.cell_list``; triclinic cells and free space
keep the O(n²) search, which suits molecules). Replicas run in one jitted, vmapped
simulation, optionally sharded over devices (:func:`simulate` ``n_devices``,
:mod:`jaxrel.parallel`); the host checks neighbour-list overflow and stability every
``log_every`` steps and reallocates an overflowed list outside jit and redoes the block.

Runs on disk (:func:`run_md`, ``jaxrel md``) are written block by block: each block
appends its frames to the trajectories and thermo.csv and rewrites a restart file and a
provisional stability.json atomically, so Ctrl-C, SIGTERM or a crash keeps every finished
block, and ``restart=True`` continues the run exactly (:class:`MDState`).

Explanations along a run (:class:`ExplanationRecorder`; ``jaxrel md --explain-every K``):
every K steps the GNN-LRP body-order totals Σ R_n and the most relevant pair terms of
every stable replica (Schnake et al., TPAMI 2022, arXiv:2006.03589; :func:`jaxrel.explain`),
appended to explain.csv and explain_pairs.csv like thermo.csv, and in stability.json how
they changed before each replica's instability.

Units: Å, fs (times in trajectories: ps), eV, K, amu; velocities Å/fs. Internally masses
are in eV fs²/Å² (:data:`AMU`), so that F = m a holds with forces in eV/Å. A run on disk
takes its masses from ``--mass``, else from the data (the bead masses of the shared CG
sets), else from the elements, and refuses coarse-grained beads of unknown mass
(:func:`resolve_masses`): a bead's species id is not an atomic number.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import io
import json
import math
import os
import signal
import threading
import time
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, NamedTuple

import ase.data
import ase.io
import ase.units
import jax
import jax.numpy as jnp
import numpy as np
from ase.calculators.singlepoint import SinglePointCalculator
from jax_md import simulate as jmd
from tqdm import tqdm

from jaxrel.checkpoint import load_checkpoint, params_digest
from jaxrel.data import read_frames
from jaxrel.files import atomic_write, prepare_output, write_json
from jaxrel.geometry import check_cell
from jaxrel.graph import (build_graphs, cell_key, check_positions, graph_from_neighbors, neighbor_list_fn,
                          pad_graph)
from jaxrel.parallel import batch_mesh, pad_leading, padded_size, replicate, select_devices, shard_leading
from jaxrel.relevance.explanation import explain
from jaxrel.relevance.table import Table

AMU = ase.units._amu * 1e10 / ase.units._e
"""1 amu in eV fs²/Å² (≈ 103.6427): amu · (Å/fs)² = _amu kg · (1e5 m/s)² = _amu · 1e10 J."""

KB = ase.units.kB
"""Boltzmann constant k_B, eV/K (ase.units)."""

ENSEMBLES = ("nve", "nvt-nh", "nvt-langevin")

CONSERVING = ("nve", "nvt-nh")
"""Ensembles with a conserved quantity, whose temperature limit also asks for an energy error."""

ENERGY_ERROR_FRACTION = 0.5
"""A replica of a :data:`CONSERVING` ensemble above the temperature limit is unstable when
its conserved quantity has moved by more than this fraction of the kinetic energy it gained
(see the module docstring)."""


AUTO_SKIN_A = 0.5
"""Å, the Verlet skin of a run that sets none, in a box where the cell list applies."""


@dataclass(frozen=True)
class MDConfig:
    """Settings of one MD run.

    Attributes:
        ensemble: ``"nve"``, ``"nvt-nh"`` (Nosé–Hoover chain) or ``"nvt-langevin"``.
        dt_fs: time step, fs.
        temperature_K: temperature of the initial Maxwell–Boltzmann velocities and the
            thermostat target, K.
        n_steps: number of integration steps (of the whole run, when continuing one).
        log_every: steps per jitted block; one frame is logged per block (the last block
            is shorter when ``n_steps`` is not a multiple).
        friction_per_ps: Langevin friction γ, 1/ps.
        tau_fs: Nosé–Hoover chain time constant, fs.
        seed: PRNG seed; replica r uses ``seed + r``.
        capacity_multiplier: neighbour-list capacity as a multiple of the pairs found at
            allocation (≥ 1); overflows are reallocated and the block redone.
        skin: Verlet skin s, Å (≥ 0): the list holds the pairs within cutoff + s and is rebuilt
            when an atom has moved more than s/2 (module docstring); 0 rebuilds it at every
            force evaluation; None (default) takes :data:`AUTO_SKIN_A` where the cell list
            applies and 0 elsewhere (:meth:`resolved_skin`).
        cell_list: search neighbours with JAX MD's cell list where the box allows it (an
            orthorhombic cell at least 3 × (cutoff + skin) wide on every side); else, and in
            free space, the O(n²) search over all pairs.
        max_temperature_K: the temperature limit, K; a replica above it is unstable (in
            :data:`CONSERVING` ensembles only if its conserved quantity moved too, see the
            module docstring). None means 10 × ``temperature_K`` (see
            :attr:`temperature_limit_K`).

    Raises:
        ValueError: an unknown ensemble or a non-positive or non-finite setting.
    """

    ensemble: str = "nve"
    dt_fs: float = 0.5
    temperature_K: float = 300.0
    n_steps: int = 1000
    log_every: int = 100
    friction_per_ps: float = 1.0
    tau_fs: float = 100.0
    seed: int = 0
    capacity_multiplier: float = 1.25
    max_temperature_K: float | None = None
    skin: float | None = None
    cell_list: bool = True

    def __post_init__(self):
        if self.ensemble not in ENSEMBLES:
            raise ValueError(f"ensemble is {self.ensemble!r}; use one of {', '.join(ENSEMBLES)}")
        for name in ("dt_fs", "temperature_K", "friction_per_ps", "tau_fs"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} is {value}; it must be a positive finite number")
        for name in ("n_steps", "log_every"):
            value = getattr(self, name)
            if int(value) != value or value < 1:
                raise ValueError(f"{name} is {value}; it must be a positive integer")
        if not (math.isfinite(self.capacity_multiplier) and self.capacity_multiplier >= 1):
            raise ValueError(f"capacity_multiplier is {self.capacity_multiplier}; it must be at "
                             "least 1 (1.25 leaves 25% headroom)")
        if self.skin is not None and not (math.isfinite(self.skin) and self.skin >= 0):
            raise ValueError(f"skin is {self.skin} Å; it must be a finite distance ≥ 0 (0: no Verlet skin)")
        if self.max_temperature_K is not None and not self.max_temperature_K > self.temperature_K:
            raise ValueError(f"max_temperature_K is {self.max_temperature_K} K; it must exceed "
                             f"temperature_K = {self.temperature_K} K (or be None for 10×)")

    @property
    def temperature_limit_K(self) -> float:
        """The instability threshold: ``max_temperature_K``, or 10 × ``temperature_K``."""
        return 10.0 * self.temperature_K if self.max_temperature_K is None else self.max_temperature_K

    def resolved_skin(self, cutoff: float, cell) -> float:
        """The skin in use, Å: ``skin``, or for None :data:`AUTO_SKIN_A` where the cell list applies
        to ``cell`` (orthorhombic, ≥ 3 × (cutoff + skin) per side) and 0 elsewhere, where a skin
        measured slower (more masked edges per step than searches saved; benchmarks/md_throughput.py)."""
        if self.skin is not None:
            return float(self.skin)
        fits = self.cell_list and _cell_list_sides(cell, cutoff + AUTO_SKIN_A) is not None
        return AUTO_SKIN_A if fits else 0.0


class Frame(NamedTuple):
    """One logged frame of R replicas: a row of a :class:`Trajectory`, and what
    :func:`simulate` passes to ``on_block``.

    Fields::

        time_ps             float | ps
        positions           (R, n_atoms, 3) float64 | Å, not wrapped into the cell
        velocities          (R, n_atoms, 3) float64 | Å/fs
        temperature_K       (R,) float64 | K
        potential_energy_eV (R,) float64 | eV
        kinetic_energy_eV   (R,) float64 | eV
        conserved_eV        (R,) float64 | eV, as in :class:`Trajectory`
        stable              (R,) bool | the replicas still stable at this frame; the others
                            repeat their last stable values and are not part of the run
    """

    time_ps: float
    positions: np.ndarray
    velocities: np.ndarray
    temperature_K: np.ndarray
    potential_energy_eV: np.ndarray
    kinetic_energy_eV: np.ndarray
    conserved_eV: np.ndarray
    stable: np.ndarray


_OBSERVED = ("temperature_K", "potential_energy_eV", "kinetic_energy_eV", "conserved_eV")
"""The per-replica observations of a :class:`Frame` (and of the jitted block)."""


@dataclass
class Trajectory:
    """The logged frames of R replicas (R = 1 for a single run).

    Frame 0 is the initial state (of this call, for a continued run); frame k follows
    block k of ``log_every`` steps. A replica that became unstable at
    ``unstable_time_ps[r]`` is frozen: its later frames repeat its last stable frame (every
    array is finite), so keep the frames with ``time_ps < unstable_time_ps[r]``. The run
    ends early when every replica is unstable; the frames then stop at the last block in
    which one was still stable, so the simulated time, max(``time_ps[-1]``,
    ``unstable_time_ps``), is one block longer.

    Fields::

        positions          (R, n_frames, n_atoms, 3) float64 | Å, not wrapped into the cell
        velocities         (R, n_frames, n_atoms, 3) float64 | Å/fs
        time_ps            (n_frames,) float64 | ps
        temperature_K      (R, n_frames) float64 | K, 2 E_kin / (3 n_atoms k_B)
        potential_energy_eV (R, n_frames) float64 | eV
        kinetic_energy_eV  (R, n_frames) float64 | eV
        conserved_eV       (R, n_frames) float64 | eV: E_pot + E_kin (nve), the Nosé–Hoover
                           chain's extended energy (nvt-nh), E_pot + E_kin (nvt-langevin:
                           not conserved)
        species            (n_atoms,) int32 | atomic numbers
        cell               (3, 3) float64 or None | Å, rows are cell vectors
        masses_amu         (n_atoms,) float64 | amu
        unstable_time_ps   (R,) float64 | ps, end of the first unstable block; NaN if stable
        stop_reason        R × (str or None) | e.g. "non-finite forces at 12.35 ps"
        steps_per_second   float | integration steps per wall-clock second (replicas
                           together count as one step), compilation excluded; with
                           ``on_block``, its time that the next block does not cover counts
        n_reallocations    int | neighbour-list reallocations after overflows
        n_rebuilds         int | steps of this call at which the neighbour lists were rebuilt
                           (skin 0: every step; a block redone after an overflow counts once;
                           0 for :func:`read_run`)
    """

    positions: np.ndarray
    velocities: np.ndarray
    time_ps: np.ndarray
    temperature_K: np.ndarray
    potential_energy_eV: np.ndarray
    kinetic_energy_eV: np.ndarray
    conserved_eV: np.ndarray
    species: np.ndarray
    cell: np.ndarray | None
    masses_amu: np.ndarray
    unstable_time_ps: np.ndarray
    stop_reason: list[str | None]
    steps_per_second: float
    n_reallocations: int
    n_rebuilds: int = 0

    def stable_frames(self, replica: int) -> np.ndarray:
        """Indices of the frames of ``replica`` before its instability (all if stable).

        Raises:
            ValueError: ``replica`` is not in 0..R−1.
        """
        n_replicas = self.positions.shape[0]
        if not 0 <= replica < n_replicas:
            raise ValueError(f"replica {replica} does not exist; the trajectory has "
                             f"{n_replicas} (0..{n_replicas - 1})")
        t = self.unstable_time_ps[replica]
        return np.flatnonzero(self.time_ps < t) if np.isfinite(t) else np.arange(len(self.time_ps))

    def frame(self, k: int) -> Frame:
        """Frame ``k`` of every replica; ``stable`` marks the replicas not yet unstable."""
        t = self.time_ps[k]
        return Frame(float(t), self.positions[:, k], self.velocities[:, k],
                     *(getattr(self, name)[:, k] for name in _OBSERVED),
                     stable=~(self.unstable_time_ps <= t))


RESTART_FORMAT = 1


@dataclass
class MDState:
    """Where a run of R replicas stands after a block: all that is needed to continue it
    exactly (:func:`simulate` ``start=``), for the same system, model and :class:`MDConfig`.

    Fields::

        integrator         list of arrays | the leaves (``jax.tree.leaves`` order, replica
                           axis first) of JAX MD's integrator state: positions, momenta,
                           forces, masses and, by ensemble, the Nosé–Hoover chain or the
                           Langevin PRNG keys; in the model's dtype
        steps_done         int | integration steps since the start of the run
        active             (R,) bool | replicas still stable
        unstable_time_ps   (R,) float64 | ps, NaN for stable replicas
        stop_reason        R × (str or None)
        conserved_start_eV (R,) float64 | eV, the conserved quantity of the initial frame
        kinetic_start_eV   (R,) float64 | eV, E_kin of the initial frame
        n_reallocations    int | neighbour-list reallocations so far
        wall_seconds       float | wall time of the blocks so far, as in
                           :attr:`Trajectory.steps_per_second`
        neighbour_reference (R, n_atoms, 3) float or None | Å, the positions each replica's
                           neighbour list was last built at (wrapped into the box with a cell
                           list); a continued run rebuilds its lists there, so they hold the
                           pairs, in the order, of the uninterrupted run. None (skin 0, or a
                           restart file without it): the lists are built at the positions.
    """

    integrator: list
    steps_done: int
    active: np.ndarray
    unstable_time_ps: np.ndarray
    stop_reason: list
    conserved_start_eV: np.ndarray
    kinetic_start_eV: np.ndarray
    n_reallocations: int
    wall_seconds: float
    neighbour_reference: np.ndarray | None = None

    def save(self, path, metadata: dict | None = None) -> Path:
        """Write the state and a JSON-serialisable ``metadata`` dict to ``path`` (.npz),
        atomically (:func:`jaxrel.files.atomic_write`, one write of the archive built in
        memory, as :func:`run_md` does after every block); the arrays keep their dtypes exactly."""
        archive = io.BytesIO()
        np.savez(archive, format=np.int64(RESTART_FORMAT), steps_done=np.int64(self.steps_done),
                 active=self.active, unstable_time_ps=self.unstable_time_ps,
                 stop_reason=np.array(json.dumps(self.stop_reason)),
                 conserved_start_eV=self.conserved_start_eV, kinetic_start_eV=self.kinetic_start_eV,
                 n_reallocations=np.int64(self.n_reallocations), wall_seconds=np.float64(self.wall_seconds),
                 metadata=np.array(json.dumps(metadata or {})),
                 **{f"integrator_{k}": np.asarray(x) for k, x in enumerate(self.integrator)},
                 **({} if self.neighbour_reference is None else {"neighbour_reference": self.neighbour_reference}))
        return atomic_write(path, archive.getvalue())

    @classmethod
    def load(cls, path) -> tuple[MDState, dict]:
        """``(state, metadata)`` from a file written by :meth:`save`.

        Raises:
            FileNotFoundError: ``path`` does not exist.
            ValueError: it is not a restart file of this format.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no MD restart file at {path}")
        try:
            with np.load(path, allow_pickle=False) as f:
                if int(f["format"]) != RESTART_FORMAT:
                    raise ValueError(f"format {int(f['format'])}")
                n_leaves = sum(name.startswith("integrator_") for name in f.files)
                state = cls(integrator=[f[f"integrator_{k}"] for k in range(n_leaves)],
                            steps_done=int(f["steps_done"]), active=f["active"].astype(bool),
                            unstable_time_ps=f["unstable_time_ps"],
                            stop_reason=json.loads(str(f["stop_reason"])),
                            conserved_start_eV=f["conserved_start_eV"], kinetic_start_eV=f["kinetic_start_eV"],
                            n_reallocations=int(f["n_reallocations"]), wall_seconds=float(f["wall_seconds"]),
                            neighbour_reference=f["neighbour_reference"] if "neighbour_reference" in f.files
                            else None)
                return state, json.loads(str(f["metadata"]))
        except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
            raise ValueError(f"{path} is not a jaxrel MD restart file of format {RESTART_FORMAT} ({err}); "
                             "start a new run") from None


def _checked_inputs(potential, positions, species, cell, masses, velocities):
    """Validated float64 positions (R, n, 3), species, cell, masses (amu), velocities."""
    pos = np.asarray(positions, dtype=np.float64)
    if pos.ndim not in (2, 3) or pos.shape[-1] != 3 or 0 in pos.shape:
        raise ValueError(f"positions have shape {pos.shape}; give (n_atoms, 3) for one run or "
                         "(n_replicas, n_atoms, 3) for replicas, in Å")
    pos = pos[None] if pos.ndim == 2 else pos
    n_atoms = pos.shape[1]
    species = np.asarray(species)
    if species.shape != (n_atoms,) or not np.issubdtype(species.dtype, np.integer):
        raise ValueError(f"species has shape {species.shape} and dtype {species.dtype} but positions "
                         f"hold {n_atoms} atoms; give one integer atomic number per atom")
    potential.check_species(species)
    cutoff = potential.config.cutoff
    if cell is not None:
        cell = check_cell(cell, cutoff, whose="the model's",
                          fix="replicate the cell (ase's Atoms.repeat)")
    try:
        check_positions(pos, species, cell=cell)
    except ValueError as err:
        raise ValueError(f"starting positions (frame = replica): {err}") from None
    if masses is None:
        unknown = species[(species < 1) | (species >= len(ase.data.atomic_masses))]
        if unknown.size:
            raise ValueError(f"species {unknown[0]} is not a chemical element, so it has no "
                             "default mass; pass masses (amu) for every atom")
        masses = ase.data.atomic_masses[species]
    masses = np.asarray(masses, dtype=np.float64)
    if masses.shape != (n_atoms,) or not (np.isfinite(masses) & (masses > 0)).all():
        raise ValueError(f"masses must be {n_atoms} positive finite numbers in amu (one per atom), "
                         f"got {masses.tolist()}")
    if velocities is not None:
        given = np.asarray(velocities, dtype=np.float64)
        velocities = given[None] if given.ndim == 2 else given
        if velocities.shape != pos.shape or not np.isfinite(velocities).all():
            raise ValueError(f"velocities must be finite and shaped like the positions, "
                             f"{np.shape(positions)}, in Å/fs; got shape {given.shape}")
    return pos, species.astype(np.int32), cell, masses, velocities


def _model_dtype(potential):
    """The potential's float dtype; ValueError if it is float64 and x64 is off."""
    dtype = jnp.dtype(potential.config.dtype)
    if dtype == jnp.float64 and not jax.config.read("jax_enable_x64"):
        raise ValueError("the model is float64 but JAX runs in float32; call "
                         "jax.config.update('jax_enable_x64', True) before simulating")
    return dtype


@jax.jit
def _update_all(nbrs, positions):
    """``nbrs`` (one list) updated on every replica's positions (R, n_atoms, 3)."""
    return jax.vmap(lambda p: nbrs.update(p))(positions)


def _allocate(neighbor_fn, positions: jax.Array, extra_capacity: int = 0):
    """A batched neighbour list of R replicas, allocated on the replica with the most pairs.

    ``positions`` (R, n_atoms, 3) are the search positions (:func:`_search_position`);
    ``extra_capacity`` is per atom (JAX MD's sparse convention).
    """
    lists = [neighbor_fn.allocate(p, extra_capacity=extra_capacity) for p in positions]
    return _update_all(max(lists, key=lambda nbrs: nbrs.max_occupancy), positions)


def _cell_list_sides(cell: np.ndarray | None, radius: float) -> np.ndarray | None:
    """The side lengths (3,) Å of ``cell`` if JAX MD's cell list can search it for pairs within
    ``radius`` Å (an orthorhombic cell more than 3 × ``radius`` wide on every side), else None."""
    if cell is None or not np.array_equal(np.diag(np.diag(cell)), cell):
        return None
    sides = np.diag(cell).astype(np.float64)
    return sides if (sides > 3 * radius).all() else None


def _search_position(position: jax.Array, physics: dict) -> jax.Array:
    """The positions the neighbour search takes: wrapped into the box for a cell list
    (``physics["cell_sides"]``), else as they are."""
    sides = physics.get("cell_sides")
    return position if sides is None else jnp.mod(position, sides)


def _displacement_sq(position: jax.Array, reference: jax.Array, cell: jax.Array | None) -> jax.Array:
    """The largest squared minimum-image displacement (Å²) of one replica's atoms,
    (n_atoms, 3) Å, from ``reference`` (n_atoms, 3) Å: the Verlet-list criterion."""
    d = position - reference
    if cell is not None:
        frac = d @ jnp.linalg.inv(cell)
        d = (frac - jnp.round(frac)) @ cell
    return jnp.max(jnp.sum(d * d, axis=-1))


def _energy_fn(potential, physics: dict, buffered: bool = False):
    """``energy_fn(position, neighbor, params)``: the model's energy (eV) of one replica on the
    graph of ``neighbor`` (receivers = idx[0], senders = idx[1]): ``neighbor`` updated at
    ``position`` (skin 0), or, ``buffered`` (a Verlet list of radius cutoff + skin that covers
    ``position``), ``neighbor`` as it is with the edges beyond the cutoff masked."""
    species, cell, cutoff = physics["species"], physics["cell"], potential.config.cutoff

    def energy_fn(position, neighbor, params):
        if buffered:
            graph = graph_from_neighbors(position, species, neighbor.idx, cell, cutoff=cutoff)
        else:
            idx = neighbor.update(_search_position(position, physics)).idx
            graph = graph_from_neighbors(position, species, idx, cell)
        return potential.energy(params, graph)

    return energy_fn


def _no_energy(position, **unused):
    """Zero energy (and forces): :func:`_block` sets the forces of initial states."""
    return jnp.zeros((), position.dtype)


def _integrator(ensemble: str, energy_fn, shift, physics: dict):
    """``(init_fn, apply_fn, conserved_fn)`` of one replica from JAX MD, built while tracing.

    ``physics`` holds arrays (time step ``dt`` fs, ``kT`` eV, Langevin ``gamma`` 1/fs,
    Nosé–Hoover ``tau`` fs), so changing them does not recompile. ``init_fn(key, position,
    mass, momentum, **kw)`` and ``apply_fn(state, **kw)`` pass ``**kw`` to ``energy_fn``;
    ``conserved_fn(state, e_pot)`` is the conserved quantity (eV) given the state's
    potential energy ``e_pot`` (eV).
    """
    kT = physics["kT"]
    if ensemble == "nve":
        nve_init, apply_fn = jmd.nve(energy_fn, shift, physics["dt"])

        def init_fn(key, position, mass, momentum, **kwargs):
            return nve_init(key, position, kT, mass=mass, momenta=momentum, **kwargs)
    elif ensemble == "nvt-nh":
        init_fn, apply_fn = jmd.nvt_nose_hoover(energy_fn, shift, physics["dt"], kT, tau=physics["tau"])
    else:
        init_fn, apply_fn = jmd.nvt_langevin(energy_fn, shift, physics["dt"], kT, gamma=physics["gamma"])

    def conserved_fn(state, e_pot):
        if ensemble == "nvt-nh":
            return jmd.nvt_nose_hoover_invariant(lambda position: e_pot, state, kT)
        return e_pot + jmd.kinetic_energy(state)

    return init_fn, apply_fn, conserved_fn


def _start(ensemble, shift, physics, keys, positions, momenta):
    """Initial states of R replicas with zero forces (momenta None: Maxwell–Boltzmann).

    Leaving the model out keeps this compilation small; :func:`_block` sets the forces.
    """
    init_fn = _integrator(ensemble, _no_energy, shift, physics)[0]

    def one(key, position, momentum):
        return init_fn(key, position, physics["mass"], momentum)

    return jax.vmap(one)(keys, positions, momenta)


CHECKS = ("positions", "forces", "energy", "temperature")
"""What :func:`_block` checks per replica, in the order :func:`_instability` reports it: finite
positions, forces and energies, and a temperature within the limit (module docstring)."""


def _block(potential, ensemble, shift, buffered, physics, states, nbrs, params, reference, n_steps, first,
           active):
    """``n_steps`` steps of every replica, after a step of length 0 if ``first``.

    A step of length 0 moves nothing and only sets the forces, so ``first`` (with
    ``n_steps=0``) turns the states of :func:`_start` into the initial frame. ``reference``
    holds each replica's initial ``conserved_eV`` and ``kinetic_energy_eV`` (R,) for the
    temperature check of :data:`CONSERVING` ensembles; NaN applies the plain limit. Replicas
    not ``active``, or not stable afterwards (a failed :data:`CHECKS` entry), keep their old
    state. ``buffered`` (skin > 0): the Verlet-list step of the module docstring, in which
    only ``active`` replicas ask for rebuilds; else the lists are rebuilt in every energy
    evaluation. Returns ``(states, nbrs, observations, stable, overflow, rebuilds)``;
    observations hold ``temperature_K``, the energies (eV) and ``checks`` (R, len(CHECKS))
    bool, True = passed; ``rebuilds`` counts the steps that rebuilt the lists.
    """
    energy_fn = _energy_fn(potential, physics, buffered)
    conserved_fn = _integrator(ensemble, energy_fn, shift, physics)[2]

    def advance(states, nbrs, dt):
        apply_fn = _integrator(ensemble, energy_fn, shift, physics | {"dt": dt})[1]
        return jax.vmap(lambda state, nbr: apply_fn(state, neighbor=nbr, params=params))(states, nbrs)

    def rebuild(nbrs, positions):
        return jax.vmap(lambda nbr, position: nbr.update(_search_position(position, physics)))(nbrs, positions)

    def step(i, carry):
        states, nbrs, rebuilds = carry
        dt = jnp.where(first & (i == 0), jnp.zeros_like(physics["dt"]), physics["dt"])
        if not buffered:
            new = advance(states, nbrs, dt)
            return new, rebuild(nbrs, new.position), rebuilds + 1

        def attempt(carry):
            """The step with the current lists, and the lists rebuilt at its positions if they
            no longer cover them; a second attempt (after a rebuild) moves the atoms to the same
            positions, which the new lists cover, so the loop runs once or twice."""
            nbrs, _, _, rebuilds = carry
            new = advance(states, nbrs, dt)
            moved = jax.vmap(_displacement_sq, (0, 0, None))(new.position, nbrs.reference_position,
                                                              physics["cell"]) > physics["half_skin"] ** 2
            needed = jnp.any(moved & active)
            nbrs = jax.lax.cond(needed, lambda nbrs: rebuild(nbrs, new.position), lambda nbrs: nbrs, nbrs)
            return nbrs, new, needed, rebuilds + needed.astype(jnp.int32)

        # one model evaluation in the compiled loop body instead of two in a cond (half the compile time)
        nbrs, new, _, rebuilds = jax.lax.while_loop(lambda carry: carry[2], attempt,
                                                    (nbrs, states, jnp.asarray(True), rebuilds))
        return new, nbrs, rebuilds

    new_states, new_nbrs, rebuilds = jax.lax.fori_loop(0, n_steps + first, step, (states, nbrs, jnp.int32(0)))

    def observe(state, nbr):
        e_pot = energy_fn(state.position, neighbor=nbr, params=params)
        e_kin = jmd.kinetic_energy(state)
        finite = jnp.stack([jnp.isfinite(state.position).all(), jnp.isfinite(state.force).all(),
                            jnp.isfinite(e_pot) & jnp.isfinite(e_kin)])
        return {"temperature_K": jmd.temperature(state) / KB, "potential_energy_eV": e_pot,
                "kinetic_energy_eV": e_kin, "conserved_eV": conserved_fn(state, e_pot), "finite": finite}

    obs = jax.vmap(observe)(new_states, new_nbrs)
    hot = obs["temperature_K"] > physics["t_max"]
    if ensemble in CONSERVING:
        gained = obs["kinetic_energy_eV"] - reference["kinetic_energy_eV"]
        error = jnp.abs(obs["conserved_eV"] - reference["conserved_eV"])
        hot = hot & ~(error <= ENERGY_ERROR_FRACTION * gained)
    obs["checks"] = jnp.concatenate([obs.pop("finite"), ~hot[:, None]], axis=1)
    stable = obs["checks"].all(axis=1)
    keep = active & stable

    def select(new, old):
        return jnp.where(keep.reshape(keep.shape + (1,) * (new.ndim - 1)), new, old)

    return (jax.tree.map(select, new_states, states), jax.tree.map(select, new_nbrs, nbrs), obs,
            stable, new_nbrs.did_buffer_overflow != 0, rebuilds)


_EXECUTABLES: dict = {}
_MAX_EXECUTABLES = 32


def _executable(fn, static: tuple, args: tuple):
    """``fn`` compiled for the ``static`` leading arguments and the shapes of ``args``.

    Compiled ahead of time (so callers can time runs without compilation) and kept in a
    small per-process cache, oldest dropped first. Call the result with ``args`` placed on
    the devices as these were (the shardings are part of the cache key).
    """
    leaves, treedef = jax.tree.flatten(args)
    key = (fn, static, treedef, tuple((x.shape, x.dtype, x.sharding) for x in map(jnp.asarray, leaves)))
    if key not in _EXECUTABLES:
        if len(_EXECUTABLES) >= _MAX_EXECUTABLES:
            _EXECUTABLES.pop(next(iter(_EXECUTABLES)))
        _EXECUTABLES[key] = jax.jit(fn, static_argnums=tuple(range(len(static)))).lower(
            *static, *args).compile()
    return _EXECUTABLES[key]


def simulate(potential, params, positions, species, *, cell=None, masses=None,
             config: MDConfig = MDConfig(), velocities=None, progress: bool = True,
             on_block: Callable[[Frame, MDState], None] | None = None,
             start: MDState | None = None, n_devices: int | None = None) -> Trajectory:
    """Run MD of one structure, or of R replicas vmapped in one jitted simulation.

    Replica r draws its velocities (and Langevin noise) from ``config.seed + r``, so it
    equals a single run with that seed and starting positions. Every ``log_every`` steps
    the host (1) redoes the block from its saved start after reallocating the neighbour
    list if it overflowed (the trajectory equals one run with ample capacity), (2) marks
    replicas with non-finite positions, forces or energies, or too hot (above
    ``config.temperature_limit_K``, with the conserved-energy condition of the module
    docstring in nve and nvt-nh), as unstable and freezes them (see :class:`Trajectory`),
    (3) logs a frame and (4) calls ``on_block``. The run stops when every replica is
    unstable. Compiled code is reused by later runs of the same model, ensemble, system size
    and cell.

    Args:
        potential, params: the model (e.g. from :func:`jaxrel.checkpoint.load_checkpoint`); MD
            runs in its dtype (float64 needs ``jax_enable_x64``). Any hashable object with
            ``config``, ``check_species`` and ``energy(params, graph)`` works.
        positions: (n_atoms, 3) or (R, n_atoms, 3) float, Å.
        species: (n_atoms,) int atomic numbers (CG bead ids with explicit ``masses``).
        cell: (3, 3) float, Å, rows are the periodic cell vectors (at least twice the cutoff
            wide); None for free space.
        masses: (n_atoms,) float, amu; default ``ase.data.atomic_masses`` by species.
        config: :class:`MDConfig`.
        velocities: (n_atoms, 3) or (R, n_atoms, 3) float, Å/fs, shaped like ``positions``;
            default Maxwell–Boltzmann at ``config.temperature_K``.
        progress: show a tqdm bar over blocks with the mean temperature and conserved energy.
        on_block: ``on_block(frame, state)`` is called with the :class:`Frame` and
            :class:`MDState` of the initial frame and of every block, also the last one, in
            which every replica may have become unstable (no replica of that frame is
            ``stable``, and the trajectory does not log it). A block's call comes while the
            next block runs (JAX dispatches asynchronously), so writing them to disk
            (:func:`run_md`) or explaining the frames (:class:`ExplanationRecorder`) overlaps
            the integration; ``steps_per_second`` includes what does not overlap. An exception
            it raises ends the run and propagates.
        start: continue a run from this :class:`MDState` (from ``on_block`` or
            :meth:`MDState.load`) until ``config.n_steps`` steps in all, exactly as if it had
            not stopped. It must come from the same potential, system and config (only
            ``n_steps`` may differ), which the caller checks; ``positions`` (the run's start)
            still give the system and ``velocities`` must be None. The trajectory begins
            with the state's frame, for which ``on_block`` is not called again.
        n_devices: shard the replicas over the first ``n_devices`` of ``jax.devices()``
            (:func:`jaxrel.parallel.batch_mesh`); R is padded to a multiple of ``n_devices``
            with copies of the last replica, which are never active and are dropped. The
            trajectory equals a one-device run up to rounding (the Verlet-list rebuild is
            decided for all replicas together, one reduction over the devices per step).
            None: every replica on JAX's default device.

    Returns:
        :class:`Trajectory` with 1 + ⌈(n_steps − steps done before) / log_every⌉ frames
        (fewer if all replicas became unstable).

    Raises:
        ValueError: positions of the wrong shape, non-finite or closer than 0.1 Å; species
            the model does not know; a cell of the wrong shape or narrower than twice the
            cutoff; bad masses or velocities; a float64 model without x64; a start that is
            already unstable (non-finite model output or temperature above the limit); a
            ``start`` that does not fit (replicas, arrays, velocities given), has done
            ``n_steps`` already or has no stable replica; a model that does not predict energies
            (a gap or dipole model); ``n_devices`` < 1 or more than JAX has.
    """
    if getattr(potential.config, "target", "energy") != "energy":    # duck-typed potentials predict energies
        potential.check_energy_target("molecular dynamics")
    dtype = _model_dtype(potential)
    pos, species, cell, masses_amu, vel = _checked_inputs(potential, positions, species, cell,
                                                          masses, velocities)
    n_replicas, n_atoms = pos.shape[:2]
    mesh = None if n_devices is None else batch_mesh(n_devices)
    n_padded = n_replicas if mesh is None else padded_size(n_replicas, mesh)
    skin = config.resolved_skin(potential.config.cutoff, cell)
    radius = potential.config.cutoff + skin
    sides = _cell_list_sides(cell, radius) if config.cell_list else None
    shift, neighbor_fn = neighbor_list_fn(radius, cell_key(cell), config.capacity_multiplier, dtype.name,
                                          cell_list=sides is not None)
    buffered = skin > 0
    t_max = config.temperature_limit_K
    conserving = config.ensemble in CONSERVING
    scalars = {"dt": config.dt_fs, "kT": KB * config.temperature_K, "t_max": t_max,
               "gamma": config.friction_per_ps / 1000.0, "tau": config.tau_fs, "half_skin": skin / 2}
    physics = {k: jnp.asarray(v, dtype) for k, v in scalars.items()}
    physics |= {"species": jnp.asarray(species), "mass": jnp.asarray(masses_amu * AMU, dtype),
                "cell": None if cell is None else jnp.asarray(cell, dtype),
                "cell_sides": None if sides is None else jnp.asarray(sides, dtype)}
    static = (potential, config.ensemble, shift, buffered)

    keys = jnp.stack([jax.random.PRNGKey(config.seed + r) for r in range(n_replicas)])
    momenta = None if vel is None else jnp.asarray(vel * masses_amu[:, None] * AMU, dtype)
    # what _start needs, so that runs differing in their neighbour search share its compilation
    args = ({k: physics[k] for k in ("dt", "kT", "gamma", "tau", "mass")}, keys, jnp.asarray(pos, dtype), momenta)
    if start is None:
        states = _executable(_start, static[1:3], args)(*args)
        nan = np.full(n_replicas, np.nan)
        start = MDState([], 0, np.ones(n_replicas, bool), nan, [None] * n_replicas, nan, nan, 0, 0.0)
        fresh = True
    else:
        template = jax.eval_shape(functools.partial(_start, *static[1:3]), *args)
        states = _resumed(start, template, n_replicas, config, velocities)
        fresh = False
    steps_done, n_reallocations, wall = start.steps_done, start.n_reallocations, start.wall_seconds
    active, unstable_time = start.active.copy(), np.array(start.unstable_time_ps, np.float64)
    stop_reason = list(start.stop_reason)
    reference = {"conserved_eV": np.array(start.conserved_start_eV, np.float64),
                 "kinetic_energy_eV": np.array(start.kinetic_start_eV, np.float64)}
    n_rebuilds = 0

    def shard(tree):
        """``tree`` padded to ``n_padded`` replicas and, with ``mesh``, split over its devices."""
        tree = pad_leading(tree, n_padded)
        return tree if mesh is None else shard_leading(tree, mesh)

    if mesh is not None:
        physics, params = replicate(physics, mesh), replicate(params, mesh)
    states = shard(states)

    def block(states, nbrs, n_steps: int, first: bool):
        padded_active = np.concatenate([active, np.zeros(n_padded - n_replicas, bool)])
        per_replica = shard(({k: jnp.asarray(v, dtype) for k, v in reference.items()}, jnp.asarray(padded_active)))
        scalars = (jnp.int32(n_steps), jnp.asarray(first))
        scalars = scalars if mesh is None else replicate(scalars, mesh)
        args = (physics, shard(states), shard(nbrs), params, per_replica[0], *scalars, per_replica[1])
        return _executable(_block, static, args)(*args)

    def allocate(positions, extra_capacity: int = 0):
        return shard(_allocate(neighbor_fn, _search_position(positions, physics), extra_capacity))

    def snapshot() -> MDState:
        return MDState([np.asarray(x)[:n_replicas] for x in jax.tree.leaves(states)], steps_done, active.copy(),
                       unstable_time.copy(), list(stop_reason), reference["conserved_eV"].copy(),
                       reference["kinetic_energy_eV"].copy(), n_reallocations, wall,
                       np.asarray(nbrs.reference_position)[:n_replicas] if buffered else None)

    if buffered and start.neighbour_reference is not None:   # the lists of the run continued
        nbrs = shard(_allocate(neighbor_fn, jnp.asarray(start.neighbour_reference, dtype)))
    else:
        nbrs = allocate(pad_leading(states.position, n_padded))
    states, nbrs, obs, _, _, _ = block(states, nbrs, 0, fresh)
    obs = _host(obs, n_replicas)
    if fresh:
        for r in range(n_replicas):
            reason = _instability(obs, r, t_max, reference, conserving)
            if reason is not None:
                raise ValueError(f"replica {r} is unstable at the start ({reason}); check the structure "
                                 "and velocities or raise max_temperature_K")
        reference = {k: np.asarray(obs[k], np.float64) for k in reference}
    frame = _frame(steps_done * config.dt_fs / 1000.0, states, obs, active, None, n_replicas)
    frames = [frame]
    if fresh and on_block is not None:
        on_block(frame, snapshot())

    steps_before, wall_before = steps_done, wall
    remaining = config.n_steps - steps_done
    sizes = [config.log_every] * (remaining // config.log_every)
    sizes += [remaining % config.log_every] if remaining % config.log_every else []
    pending = None   # the last block's (frame, state), passed to on_block while the next one runs
    bar = tqdm(sizes, desc=f"MD {config.ensemble}", unit="block", disable=not progress)
    try:
        for n_steps in bar:
            while True:
                tic = time.perf_counter()
                running = block(states, nbrs, n_steps, False)   # dispatched asynchronously
                if pending is not None:
                    on_block(*pending)
                    pending = None
                new_states, new_nbrs, obs, stable, overflow, rebuilds = jax.block_until_ready(running)
                wall += time.perf_counter() - tic
                if not (np.asarray(overflow)[:n_replicas] & active).any():
                    break
                # at least double the capacity, so a block overflows a bounded number of times
                nbrs = allocate(states.position, extra_capacity=-(-nbrs.max_occupancy // n_atoms))
                n_reallocations += 1
            obs, stable = _host(obs, n_replicas), np.asarray(stable)[:n_replicas]
            n_rebuilds += int(rebuilds)
            steps_done += n_steps
            t_ps = steps_done * config.dt_fs / 1000.0
            for r in np.flatnonzero(active & ~stable):
                active[r], unstable_time[r] = False, t_ps
                stop_reason[r] = f"{_instability(obs, r, t_max, reference, conserving)} at {t_ps:.4g} ps"
            states, nbrs = new_states, new_nbrs
            frame = _frame(t_ps, states, obs, active, frame, n_replicas)
            if active.any():
                frames.append(frame)
            if on_block is not None:
                pending = (frame, snapshot())
            if not active.any():
                break
            bar.set_postfix(T=f"{frame.temperature_K[active].mean():.0f} K",
                            E=f"{frame.conserved_eV[active].mean():.5g} eV")
        if pending is not None:
            on_block(*pending)
    finally:
        bar.close()
    return _trajectory(frames, species=species, cell=cell, masses_amu=masses_amu,
                       unstable_time_ps=unstable_time, stop_reason=stop_reason,
                       steps_per_second=(steps_done - steps_before) / (wall - wall_before)
                       if wall > wall_before else float("nan"),
                       n_reallocations=n_reallocations, n_rebuilds=n_rebuilds)


class Rollout(NamedTuple):
    """A pure NVE trajectory (:func:`rollout`).

    Fields (S = n_steps // save_every + 1 saved frames; frame k after k · save_every steps)::

        positions           (S, n_atoms, 3) | Å, not wrapped into the cell
        velocities          (S, n_atoms, 3) | Å/fs
        potential_energy_eV (S,) | eV
        kinetic_energy_eV   (S,) | eV
        overflow            () bool | the fixed-capacity neighbour list overflowed at some step:
                            the trajectory missed pairs and is wrong; build the rollout with a
                            larger ``capacity_multiplier``
    """

    positions: jax.Array
    velocities: jax.Array
    potential_energy_eV: jax.Array
    kinetic_energy_eV: jax.Array
    overflow: jax.Array


def rollout(potential, species, positions, *, n_steps: int, dt_fs: float = 0.5, save_every: int = 1,
            cell=None, masses=None, capacity_multiplier: float = 1.5) -> Callable[..., Rollout]:
    """A pure, differentiable NVE rollout: ``run(params, positions, velocities) -> Rollout``.

    Velocity Verlet (``jax_md.simulate.nve``, Swope et al. 1982) in one ``lax.scan`` with no
    host-side step, so ``run`` composes with ``jax.jit``, ``jax.vmap`` and ``jax.grad``: the
    gradient of a trajectory observable (e.g. the mean potential energy, or a smoothed RDF
    bin) with respect to the model's params, the start positions or velocities is exact
    backpropagation through the integrator (Schoenholz & Cubuk 2020, arXiv:1912.04232).
    The forces are the same as :func:`simulate`'s (the model on JAX MD's sparse neighbour
    list, updated at every force evaluation), so with the same start the positions agree with
    an NVE :func:`simulate` run to rounding.

    When it applies: the neighbour list has a fixed capacity, allocated here from
    ``positions`` with ``capacity_multiplier`` headroom, and nothing can reallocate it inside
    the scan. A run that needs more pairs than that (a compressed liquid, a collapsing
    molecule) sets ``overflow`` and its trajectory is wrong: check it, and rebuild with a
    larger multiplier. There is no instability detection and no thermostat; for long or
    unstable runs use :func:`simulate`. Memory for ``jax.grad`` grows with ``n_steps``
    (wrap the step in ``jax.checkpoint`` for long runs).

    Args:
        potential: an energy model (as :func:`simulate`).
        species: (n_atoms,) int atomic numbers.
        positions: (n_atoms, 3) Å, the structure the neighbour list is allocated for (``run``
            may start from other positions of the same system).
        n_steps: integration steps (≥ 1); dt_fs: time step, fs; save_every: steps between
            saved frames (divides ``n_steps``).
        cell: (3, 3) Å rows, at least twice the cutoff wide, or None; masses: (n_atoms,) amu
            (default: the elements').
        capacity_multiplier: neighbour capacity as a multiple of the pairs at allocation (≥ 1).

    Returns:
        ``run(params, positions (n_atoms, 3) Å, velocities (n_atoms, 3) Å/fs) -> Rollout``.
    Raises:
        ValueError: as :func:`simulate` for the structure, species, cell, masses and dtype;
            ``n_steps`` or ``save_every`` not positive integers, or ``save_every`` not dividing
            ``n_steps``; ``capacity_multiplier`` < 1; a gap or dipole model.
    """
    if getattr(potential.config, "target", "energy") != "energy":
        potential.check_energy_target("molecular dynamics")
    for name, value in (("n_steps", n_steps), ("save_every", save_every)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} is {value}; it must be a positive integer")
    if n_steps % save_every:
        raise ValueError(f"save_every = {save_every} does not divide n_steps = {n_steps}; choose a divisor")
    if not capacity_multiplier >= 1:
        raise ValueError(f"capacity_multiplier is {capacity_multiplier}; it must be at least 1")
    dtype = _model_dtype(potential)
    pos, species, cell, masses_amu, _ = _checked_inputs(potential, positions, species, cell, masses, None)
    if pos.shape[0] != 1:
        raise ValueError(f"positions have shape {np.shape(positions)}; a rollout takes one structure (n_atoms, 3); "
                         "jax.vmap the returned function over replicas")
    shift, neighbor_fn = neighbor_list_fn(potential.config.cutoff, cell_key(cell), capacity_multiplier, dtype.name)
    physics = {"dt": jnp.asarray(dt_fs, dtype), "kT": jnp.zeros((), dtype), "species": jnp.asarray(species),
               "mass": jnp.asarray(masses_amu * AMU, dtype), "cell": None if cell is None else jnp.asarray(cell, dtype)}
    allocated = neighbor_fn.allocate(jnp.asarray(pos[0], dtype))
    energy_fn = _energy_fn(potential, physics)
    init_fn, apply_fn, _ = _integrator("nve", energy_fn, shift, physics)
    mass = physics["mass"][:, None]

    def observe(state, nbr, params):
        return (state.position, state.velocity, energy_fn(state.position, neighbor=nbr, params=params),
                jmd.kinetic_energy(state))

    def run(params, positions, velocities) -> Rollout:
        nbr = allocated.update(positions)
        state = init_fn(jax.random.PRNGKey(0), positions, physics["mass"], velocities * mass, neighbor=nbr,
                        params=params)
        start = observe(state, nbr, params)

        def block(carry, _):
            def step(carry, _):
                state, nbr, overflow = carry
                state = apply_fn(state, neighbor=nbr, params=params)
                nbr = nbr.update(state.position)
                return (state, nbr, overflow | nbr.did_buffer_overflow), None

            carry = jax.lax.scan(step, carry, None, length=save_every)[0]
            return carry, observe(*carry[:2], params)

        (_, _, overflow), saved = jax.lax.scan(block, (state, nbr, nbr.did_buffer_overflow), None,
                                               length=n_steps // save_every)
        frames = [jnp.concatenate([a[None], b]) for a, b in zip(start, saved)]
        return Rollout(*frames, overflow)

    return run


def _resumed(start: MDState, template, n_replicas: int, config: MDConfig, velocities):
    """The integrator state of ``start`` as the pytree of ``template`` (from
    ``jax.eval_shape`` of :func:`_start`), or ValueError when it cannot continue."""
    if velocities is not None:
        raise ValueError("velocities were given with start; a continued run takes its velocities "
                         "from the state, so pass velocities=None")
    if len(start.active) != n_replicas:
        raise ValueError(f"start holds {len(start.active)} replicas but the positions hold {n_replicas}; "
                         "continue a run with its own starting positions")
    if start.steps_done >= config.n_steps:
        raise ValueError(f"start has done {start.steps_done} steps, all of config.n_steps = {config.n_steps}; "
                         "raise n_steps to continue the run")
    if not start.active.any():
        raise ValueError("every replica of start is unstable; there is nothing to continue")
    leaves, treedef = jax.tree.flatten(template)
    expected = [(tuple(t.shape), np.dtype(t.dtype).name) for t in leaves]
    found = [(np.shape(x), np.asarray(x).dtype.name) for x in start.integrator]
    if found != expected:
        raise ValueError(f"start holds integrator arrays {found} but this system, ensemble and model "
                         f"dtype need {expected}; continue a run with its own model and settings")
    return jax.tree.unflatten(treedef, [jnp.asarray(x) for x in start.integrator])


def _instability(obs: dict, r: int, t_max: float, reference: dict, conserving: bool) -> str | None:
    """Why replica ``r`` of the observations ``obs`` is unstable, or None: the first failed
    :data:`CHECKS` entry of the block, in words."""
    for what, passed in zip(CHECKS, np.asarray(obs["checks"][r])):
        if passed:
            continue
        if what != "temperature":
            return f"non-finite {what}"
        reason = f"temperature {float(obs['temperature_K'][r]):.0f} K > {t_max:.0f} K"
        if conserving and np.isfinite(reference["conserved_eV"][r]):
            error = abs(float(obs["conserved_eV"][r]) - reference["conserved_eV"][r])
            gained = float(obs["kinetic_energy_eV"][r]) - reference["kinetic_energy_eV"][r]
            reason += (f" (conserved energy off by {error:.3g} eV, more than half the {gained:.3g} eV of "
                       "kinetic energy gained)")
        return reason
    return None


def _host(obs: dict, n_replicas: int) -> dict:
    """The observations of a block as NumPy arrays of the first ``n_replicas`` (no padding)."""
    return {k: np.asarray(v)[:n_replicas] for k, v in obs.items()}


def _frame(t_ps: float, states, obs: dict, active: np.ndarray, last: Frame | None, n_replicas: int) -> Frame:
    """The :class:`Frame` of the first ``n_replicas`` replicas after a block; replicas not
    ``active`` repeat ``last``'s values."""
    values = {k: np.asarray(obs[k], np.float64) for k in _OBSERVED}
    if last is not None:
        values = {k: np.where(active, v, getattr(last, k)) for k, v in values.items()}
    return Frame(t_ps, np.asarray(states.position, np.float64)[:n_replicas],
                 np.asarray(states.velocity, np.float64)[:n_replicas], stable=active.copy(), **values)


def _trajectory(frames: list[Frame], **fields) -> Trajectory:
    """The :class:`Trajectory` of the logged ``frames`` and the run's other ``fields``."""
    arrays = {k: np.stack([getattr(f, k) for f in frames], axis=1) for k in ("positions", "velocities", *_OBSERVED)}
    return Trajectory(**arrays, time_ps=np.array([f.time_ps for f in frames], np.float64), **fields)


THERMO_COLUMNS = ("replica", "time_ps", "temperature_K", "potential_energy_eV", "kinetic_energy_eV",
                  "conserved_eV")


def trajectory_name(replica: int) -> str:
    """A replica's trajectory file in a run folder: trajectory.extxyz for replica 0,
    trajectory_r<k>.extxyz for replica k."""
    return "trajectory.extxyz" if replica == 0 else f"trajectory_r{replica}.extxyz"


def _extxyz(frame: Frame, replica: int, species, cell, masses_amu) -> str:
    """One replica's frame as extended XYZ text (the format of :func:`write_trajectory`)."""
    atoms = ase.Atoms(numbers=species, positions=frame.positions[replica], cell=cell,
                      pbc=cell is not None, masses=masses_amu)
    atoms.set_velocities(frame.velocities[replica] / ase.units.fs)
    atoms.info.update(time_ps=float(frame.time_ps), temperature_K=float(frame.temperature_K[replica]),
                      kinetic_energy_eV=float(frame.kinetic_energy_eV[replica]),
                      conserved_eV=float(frame.conserved_eV[replica]))
    atoms.calc = SinglePointCalculator(atoms, energy=float(frame.potential_energy_eV[replica]))
    text = io.StringIO()
    ase.io.write(text, atoms, format="extxyz")
    return text.getvalue()


def _csv_text(rows) -> str:
    """``rows`` (iterables of strings) as CSV text, one line each."""
    text = io.StringIO()
    csv.writer(text).writerows(rows)
    return text.getvalue()


def _thermo_rows(frame: Frame) -> str:
    """CSV rows (:data:`THERMO_COLUMNS`) of the stable replicas of ``frame``; floats as repr (exact)."""
    return _csv_text([str(r), repr(float(frame.time_ps))] + [
        repr(float(getattr(frame, c)[r])) for c in THERMO_COLUMNS[2:]] for r in np.flatnonzero(frame.stable))


def _thermo_header() -> str:
    return _csv_text([THERMO_COLUMNS])


def write_trajectory(traj: Trajectory, path, replica: int = 0) -> None:
    """Write the stable frames of one replica as extended XYZ (readable by ``ase.io.read``),
    atomically (:func:`jaxrel.files.atomic_write`).

    Each frame stores positions (Å), velocities (as ASE momenta; ``get_velocities()`` ×
    ``ase.units.fs`` gives Å/fs), masses (amu), the cell and pbc, the potential energy
    (eV, as the calculator energy) and ``time_ps``, ``temperature_K``,
    ``kinetic_energy_eV`` and ``conserved_eV`` in ``atoms.info``.

    Raises:
        ValueError: ``replica`` does not exist.
    """
    atomic_write(path, "".join(_extxyz(traj.frame(k), replica, traj.species, traj.cell, traj.masses_amu)
                               for k in traj.stable_frames(replica)))


def write_thermo(traj: Trajectory, path) -> None:
    """Write the stable frames of every replica as CSV with the columns :data:`THERMO_COLUMNS`,
    frame by frame, atomically."""
    atomic_write(path, _thermo_header() + "".join(_thermo_rows(traj.frame(k)) for k in range(len(traj.time_ps))))


EXPLAIN_FILE = "explain.csv"
PAIRS_FILE = "explain_pairs.csv"
PAIR_COLUMNS = ("time_ps", "replica", "rank", "i", "j", "species_i", "species_j", "distance_A", "relevance_eV")
"""The columns of explain_pairs.csv, one row per kept 2-body term: rank 1 is the term of largest
``|R₂|`` of its record (time, replica); i < j are atom indices, distance in Å, relevance in eV."""

EXPLAIN_RULE = "gi"
"""The rule of the explanations recorded along MD runs: gradient × input (:mod:`jaxrel.nn`)."""

_EXPLAIN_SETTINGS = ("every", "order", "top")
"""The :class:`ExplanationRecorder` settings that a run records (as ``explain_<name>``) and --restart compares."""


def explain_columns(order: int) -> tuple[str, ...]:
    """The columns of explain.csv for body orders 1..``order``: ``time_ps`` (ps), ``replica``,
    ``sum_1body_eV`` … ``sum_{order}body_eV`` and ``residual_eV`` (eV)."""
    return ("time_ps", "replica", *(f"sum_{n}body_eV" for n in range(1, order + 1)), "residual_eV")


def _no_pairs() -> Table:
    """A 2-body :class:`~jaxrel.relevance.Table` without rows."""
    return Table(frame=np.zeros(0, np.int32), atoms=np.zeros((0, 2), np.int32), species=np.zeros((0, 2), np.int32),
                 relevance=np.zeros(0), distances=np.zeros((0, 1)))


class MDExplanation(NamedTuple):
    """GNN-LRP explanations recorded along an MD run, one record per (time, replica): what
    :class:`ExplanationRecorder` records and explain.csv and explain_pairs.csv of a
    :func:`run_md` folder hold (:func:`read_explanations`).

    Fields (m records, body orders 1..N, p pairs in all)::

        time_ps       (m,) float64 | ps
        replica       (m,) int64 | the replica explained
        order_totals  (m, N) float64 | eV, column n − 1: Σ R_n, the sum of the n-body terms
        residual      (m,) float64 | eV, Σ of all walk relevances − Σ of the listed terms: the
                      terms of body order above N (0 for N = n_interactions + 1)
        pairs         2-body Table, p rows | the top 2-body terms of each record, largest |R₂|
                      first (atoms, species, distances Å, relevance eV); its ``frame`` column
                      is the record (the row of the arrays above)
    """

    time_ps: np.ndarray
    replica: np.ndarray
    order_totals: np.ndarray
    residual: np.ndarray
    pairs: Table

    @property
    def order(self) -> int:
        """The highest body order N recorded."""
        return self.order_totals.shape[1]

    def record_pairs(self, k: int) -> Table:
        """The top 2-body terms of record ``k``, largest ``|R₂|`` first."""
        return self.pairs.select(self.pairs.frame == k)

    @classmethod
    def concatenate(cls, parts: list[MDExplanation], order: int) -> MDExplanation:
        """The records of ``parts`` in order, as one; ``order`` is N (for an empty list)."""
        offsets = np.cumsum([0] + [len(p.time_ps) for p in parts])[:-1]
        return cls(time_ps=np.concatenate([np.zeros(0)] + [p.time_ps for p in parts]),
                   replica=np.concatenate([np.zeros(0, np.int64)] + [p.replica for p in parts]),
                   order_totals=np.concatenate([np.zeros((0, order))] + [p.order_totals for p in parts]),
                   residual=np.concatenate([np.zeros(0)] + [p.residual for p in parts]),
                   pairs=Table.concatenate([_no_pairs()] + [replace(p.pairs, frame=p.pairs.frame + o)
                                                            for p, o in zip(parts, offsets)]))


class ExplanationRecorder:
    """GNN-LRP explanations recorded along an MD run: an ``on_block`` for :func:`simulate`, and
    what :func:`run_md` appends to explain.csv and explain_pairs.csv.

    At every frame passed to ``on_block`` after a multiple of ``every`` integration steps (the
    initial frame, at 0 steps, included; a continued run's start frame is not passed again), the
    positions of every replica still ``stable`` there are explained by the exact GNN-LRP n-body
    decomposition with the GI rule (:func:`jaxrel.explain`; Schnake et al., "Higher-order
    explanations of graph neural networks via relevant walks", TPAMI 2022, arXiv:2006.03589),
    the replicas of the frame as one batched graph in one :func:`jaxrel.explain` call (which
    decomposes them one after another: one masked-backward computation per replica, all with
    the same compiled code), and per replica the body-order totals Σ R_n
    (n = 1..``order``), the higher-order residual and the ``top`` 2-body terms of largest ``|R₂|``
    are kept (:class:`MDExplanation`). A replica with atoms closer than 0.1 Å, which
    :func:`jaxrel.explain` refuses (they have collapsed; the stability report marks that), is
    left out of the record.

    Where the work runs: on the host, inside ``on_block``, that is while the next MD block,
    already dispatched (JAX's asynchronous dispatch), runs. Building the graphs, enumerating the
    connected atom sets and filling the tables is host work that overlaps the block. The masked
    backward passes of the decomposition are jitted (compiled once per model, system and size
    class; the edge capacity grows with 25 % headroom and never shrinks, so recompilation is
    rare), but they are computations of their own, not fused into the jitted MD block, and they
    share the device (on CPU: the cores) with it. Their cost shows in the run's
    ``steps_per_second``; benchmarks/md_explain_overhead.py measures it.

    Example::

        recorder = ExplanationRecorder(potential, params, species, config=config, every=1000)
        simulate(potential, params, positions, species, config=config, on_block=recorder)
        recorder.explanations.order_totals      # (n_records, 2) eV

    Args:
        potential, params: the model of the MD run, a message-passing model of the energy
            (SchNet, PaiNN, NequIP).
        species: (n_atoms,) int atomic numbers.
        config: the run's :class:`MDConfig` (``every`` must fit its ``log_every``).
        every: integration steps between records, a positive multiple of ``config.log_every``.
        order: the highest body order N, 1 ≤ N ≤ n_interactions + 1 (walks of T layers visit
            at most T + 1 atoms); orders above N make up the residual.
        top: 2-body terms kept per record (≥ 0; a positive ``top`` needs ``order`` ≥ 2).
        cell: (3, 3) float, Å, rows are the periodic cell vectors; None for free space.

    Attributes:
        records: list of :class:`MDExplanation`, one per recorded frame.
        seconds: wall time spent recording, s.

    Raises:
        ValueError: (at construction, so before anything runs or is written) ``every`` that is
            not a positive multiple of ``config.log_every``, ``order`` outside
            1..n_interactions + 1, a negative ``top`` or a positive one with ``order`` 1, a
            model without message-passing layers, or a model that does not predict energies.
    """

    def __init__(self, potential, params, species, *, config: MDConfig, every: int, order: int = 2,
                 top: int = 5, cell=None):
        if int(every) != every or every < 1 or every % config.log_every:
            raise ValueError(f"--explain-every is {every} steps, which is not a positive multiple of --log-every "
                             f"{config.log_every}; pass a multiple of {config.log_every} (e.g. "
                             f"{config.log_every * max(1, round(every / config.log_every))})")
        potential.check_energy_target("explaining an MD run")
        if not potential.has_layers:
            raise ValueError(f"the {potential.config.model} model has no message-passing layers, so GNN-LRP cannot "
                             "explain its MD run; drop --explain-every (explain frames of it with jaxrel audit)")
        n_interactions = potential.config.n_interactions
        if int(order) != order or not 1 <= order <= n_interactions + 1:
            raise ValueError(f"--explain-order is {order}, but a model with {n_interactions} interactions has terms "
                             f"of body order 1 to {n_interactions + 1}; pass one of those")
        if int(top) != top or top < 0 or (top and order < 2):
            raise ValueError(f"--explain-top is {top} with --explain-order {order}; keep 0 or more pairs, and "
                             "pairs need --explain-order 2 or more (or pass --explain-top 0)")
        self.potential, self.params, self.cell = potential, params, cell
        self.species = np.asarray(species)
        self.every, self.order, self.top = int(every), int(order), int(top)
        self.records: list[MDExplanation] = []
        self.seconds = 0.0
        self._n_edges = 0

    def __call__(self, frame: Frame, state: MDState) -> MDExplanation | None:
        """Explain the stable replicas of ``frame`` when ``state.steps_done`` is a multiple of
        ``every``: returns the new record (one row per replica explained), else None.

        Raises:
            ValueError: the errors of :func:`jaxrel.explain` (e.g. positions or cell it refuses).
        """
        if state.steps_done % self.every:
            return None
        tic = time.perf_counter()
        replicas = [int(r) for r in np.flatnonzero(frame.stable) if _explainable(frame.positions[r], self.cell)]
        if not replicas:
            return None
        graph = build_graphs(frame.positions[replicas], self.species, self.potential.config.cutoff, cell=self.cell,
                             min_distance=None)
        if graph.n_edges > self._n_edges:
            self._n_edges = 64 * math.ceil(1.25 * graph.n_edges / 64)
        explanation = explain(self.potential, self.params, pad_graph(graph, graph.n_atoms, self._n_edges),
                              max_order=self.order, rules=EXPLAIN_RULE, frame_index=replicas)
        record = _record(explanation, frame.time_ps, self.top)
        self.records.append(record)
        self.seconds += time.perf_counter() - tic
        return record

    @property
    def explanations(self) -> MDExplanation:
        """Every record so far, as one :class:`MDExplanation`."""
        return MDExplanation.concatenate(self.records, self.order)


def _explainable(positions: np.ndarray, cell) -> bool:
    """Whether :func:`jaxrel.explain` accepts one replica's positions (no atoms closer than 0.1 Å)."""
    try:
        check_positions(positions, cell=cell)
    except ValueError:
        return False
    return True


def _record(explanation, time_ps: float, top: int) -> MDExplanation:
    """The record of an :class:`~jaxrel.relevance.Explanation` whose frame numbers are replicas."""
    n = len(explanation.frames)
    pairs = _no_pairs()
    if top:
        table = explanation.tables[2]
        rows = [np.flatnonzero(table.frame == f) for f in explanation.frames]
        rows = [r[np.argsort(-np.abs(table.relevance[r]), kind="stable")[:top]] for r in rows]
        pairs = replace(table.select(np.concatenate(rows)), prior=None,
                        frame=np.repeat(np.arange(n), [len(r) for r in rows]))
    totals = np.stack([explanation.order_totals(k) for k in range(1, explanation.max_order + 1)], axis=1)
    return MDExplanation(np.full(n, float(time_ps)), explanation.frames.astype(np.int64), totals,
                         np.asarray(explanation.higher_order_residual, np.float64), pairs)


def _explain_rows(record: MDExplanation) -> tuple[str, str]:
    """The rows of ``record`` in explain.csv and in explain_pairs.csv; floats as repr (exact)."""
    totals = _csv_text([repr(float(t)), str(int(r))] + [repr(float(x)) for x in (*sums, residual)]
                       for t, r, sums, residual in zip(record.time_ps, record.replica, record.order_totals,
                                                       record.residual))
    p = record.pairs
    rank = np.arange(len(p)) - np.searchsorted(p.frame, p.frame) + 1
    pairs = _csv_text([repr(float(record.time_ps[k])), str(int(record.replica[k])), str(int(rank_k)),
                       *map(str, p.atoms[m].tolist()), *map(str, p.species[m].tolist()),
                       repr(float(p.distances[m, 0])), repr(float(p.relevance[m]))]
                      for m, (k, rank_k) in enumerate(zip(p.frame, rank)))
    return totals, pairs


def read_explanations(out) -> MDExplanation:
    """The explanations of a run folder written by :func:`run_md` with ``explain_every``, up to
    the last finished block that its restart file records (explain.csv and explain_pairs.csv;
    floats exact).

    Raises:
        FileNotFoundError: ``out`` holds no restart file.
        ValueError: the run was not explained, or its files do not match the restart file.
    """
    out = Path(out)
    _, metadata = MDState.load(out / RESTART_FILE)
    sizes = metadata["files"]
    if EXPLAIN_FILE not in sizes:
        raise ValueError(f"the run in {out} was not explained (it has no {EXPLAIN_FILE}); run jaxrel md with "
                         "--explain-every")
    header, *rows = csv.reader(io.StringIO(_recorded_text(out / EXPLAIN_FILE, sizes)))
    order = len(header) - 3
    pair_header, *pair_rows = csv.reader(io.StringIO(_recorded_text(out / PAIRS_FILE, sizes)))
    table = np.array([[float(x) for x in row] for row in rows], np.float64).reshape(len(rows), order + 3)
    record_of = {key: k for k, key in enumerate(zip(table[:, 0].tolist(), table[:, 1].astype(int).tolist()))}
    try:
        if tuple(header) != explain_columns(order) or tuple(pair_header) != PAIR_COLUMNS:
            raise KeyError(header)
        frame = [record_of[float(row[0]), int(row[1])] for row in pair_rows]
    except KeyError:
        raise ValueError(f"{out / EXPLAIN_FILE} and {out / PAIRS_FILE} do not hold the same records in jaxrel's "
                         "columns; the run's files were changed, start a new run") from None

    def column(k, kind):
        return np.array([kind(row[k]) for row in pair_rows], kind)

    pairs = Table(frame=np.array(frame, np.int32), atoms=np.stack([column(3, int), column(4, int)], axis=-1),
                  species=np.stack([column(5, int), column(6, int)], axis=-1), relevance=column(8, float),
                  distances=column(7, float)[:, None]) if pair_rows else _no_pairs()
    return MDExplanation(table[:, 0], table[:, 1].astype(np.int64), table[:, 2:-1], table[:, -1], pairs)


def _explanation_summary(explanations: MDExplanation, replica: int, end_ps: float | None) -> dict | None:
    """stability.json's ``explanation`` of one replica: its first and last record before
    ``end_ps`` (its instability time; None: the end of the run), each with the body-order totals
    (eV), the residual (eV) and its top pair, and the change of each total from first to last
    (eV); None when no record precedes ``end_ps``."""
    end = math.inf if end_ps is None else end_ps
    rows = np.flatnonzero((explanations.replica == replica) & (explanations.time_ps < end))
    if not len(rows):
        return None

    def entry(k: int) -> dict:
        pairs = explanations.record_pairs(k)
        top = None if not len(pairs) else {
            "atoms": pairs.atoms[0].tolist(), "species": pairs.species[0].tolist(),
            "distance_A": float(pairs.distances[0, 0]), "relevance_eV": float(pairs.relevance[0])}
        return {"time_ps": float(explanations.time_ps[k]),
                "body_order_totals_eV": {str(n): float(explanations.order_totals[k, n - 1])
                                         for n in range(1, explanations.order + 1)},
                "residual_eV": float(explanations.residual[k]), "top_pair": top}

    first, last = entry(rows[0]), entry(rows[-1])
    return {"n_records": len(rows), "first": first, "last": last,
            "change_eV": {n: last["body_order_totals_eV"][n] - value
                          for n, value in first["body_order_totals_eV"].items()}}


RESTART_FILE = "restart.npz"
RUN_FILES = ("trajectory*.extxyz", "thermo.csv", EXPLAIN_FILE, PAIRS_FILE, "stability.json", RESTART_FILE)
"""The files :func:`run_md` writes in its folder (glob patterns)."""

UNITS = {"time": "ps", "dt": "fs", "temperature": "K", "energy": "eV", "mass": "amu", "length": "Å"}


def _recorded_text(path: Path, sizes: dict) -> str:
    """The first ``sizes[path.name]`` bytes of ``path``: what the last finished block left."""
    with path.open("rb") as f:
        data = f.read(sizes[path.name])
    if len(data) != sizes[path.name]:
        raise ValueError(f"{path} is shorter than the restart file records ({len(data)} of "
                         f"{sizes[path.name]} bytes); the run's files were changed, start a new run")
    return data.decode("utf-8")


def read_run(out) -> Trajectory:
    """The :class:`Trajectory` of a run folder written by :func:`run_md`, finished or not.

    Reads the frames up to the last finished block that the restart file records (bytes a
    killed run appended after it are ignored): positions and velocities from the extxyz
    files (8 decimals: 1e-8 Å, 1e-8 Å/fs), temperatures and energies from thermo.csv
    (exact). Frozen replicas repeat their last stable frame; ``steps_per_second`` spans every
    invocation of the run.

    Raises:
        FileNotFoundError: ``out`` holds no restart file or a trajectory is missing.
        ValueError: the files do not match the restart file.
    """
    out = Path(out)
    state, metadata = MDState.load(out / RESTART_FILE)
    sizes = metadata["files"]
    rows = list(csv.reader(io.StringIO(_recorded_text(out / "thermo.csv", sizes))))[1:]
    replica = np.array([int(row[0]) for row in rows], dtype=np.int64)
    table = np.array([[float(x) for x in row[1:]] for row in rows], dtype=np.float64).reshape(len(rows), -1)
    images = [ase.io.read(io.StringIO(_recorded_text(out / trajectory_name(r), sizes)), index=":",
                          format="extxyz") for r in range(len(state.active))]
    counts = [int((replica == r).sum()) for r in range(len(images))]
    index = [np.minimum(np.arange(max(counts)), n - 1) for n in counts]
    tables = [table[replica == r][i] for r, i in enumerate(index)] if min(counts) > 0 else []
    time_ps = tables[int(np.argmax(counts))][:, 0] if tables else None
    if [len(i) for i in images] != counts or not tables or not all(
            np.array_equal(t[:n, 0], time_ps[:n]) for t, n in zip(tables, counts)):
        raise ValueError(f"the trajectories in {out} hold {[len(i) for i in images]} frames and thermo.csv "
                         f"{counts}, not the same frames; the run's files were changed, start a new run")
    first = images[0][0]
    return Trajectory(
        positions=np.stack([np.stack([a.positions for a in images[r]])[i] for r, i in enumerate(index)]),
        velocities=np.stack([np.stack([a.get_velocities() * ase.units.fs for a in images[r]])[i]
                             for r, i in enumerate(index)]),
        time_ps=time_ps, **{c: np.stack([t[:, k + 1] for t in tables]) for k, c in enumerate(THERMO_COLUMNS[2:])},
        species=first.numbers.astype(np.int32), cell=first.cell.array.copy() if first.pbc.any() else None,
        masses_amu=first.get_masses(), unstable_time_ps=state.unstable_time_ps, stop_reason=state.stop_reason,
        steps_per_second=state.steps_done / state.wall_seconds if state.wall_seconds > 0 else float("nan"),
        n_reallocations=state.n_reallocations)


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped :func:`run_md` after its finished blocks were written.

    Attributes:
        report: the stability report written to stability.json (status "interrupted").
    """

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


@contextmanager
def _sigterm_interrupts():
    """Within the ``with`` block SIGTERM raises KeyboardInterrupt, as Ctrl-C does; the
    previous handler is restored afterwards. Off the main thread Python cannot handle
    signals, and nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _truncate(out: Path, sizes: dict) -> None:
    """Cut the appended files of a run to the lengths ``sizes`` (bytes) that its restart file
    records, dropping what a stopped run wrote after its last recorded block."""
    for name, size in sizes.items():
        path = out / name
        if not path.is_file() or path.stat().st_size < size:
            raise ValueError(f"{path} is missing or shorter than {RESTART_FILE} records; the run's files "
                             "were changed, start a new run")
        os.truncate(path, size)


class _RunFiles:
    """The files of a :func:`run_md` folder, appended block by block: :meth:`write` is the
    ``on_block`` of :func:`simulate`, which calls it while the next block runs on the device.

    Each block appends its frames and thermo rows (and, with a ``recorder``, its explanation
    rows to explain.csv and explain_pairs.csv), then rewrites the restart file, which records
    the length of every appended file, and the provisional stability.json atomically. A write
    that is stopped half-way leaves at most a partial frame past the recorded lengths, which
    :func:`read_run` ignores and :func:`_truncate` removes.
    """

    def __init__(self, out: Path, settings: dict, system: tuple, requested_time_ps: float,
                 sizes: dict | None = None, blocks: int = 0, write_seconds: float = 0.0,
                 recorder: ExplanationRecorder | None = None):
        self.out, self.settings, self.system, self.requested_time_ps = out, settings, system, requested_time_ps
        self.sizes, self.blocks, self.write_seconds, self.handles = sizes, blocks, write_seconds, None
        self.recorder = recorder
        self.names = [trajectory_name(r) for r in range(settings["n_replicas"])] + ["thermo.csv"]
        if recorder is not None:
            self.names += [EXPLAIN_FILE, PAIRS_FILE]

    def write(self, frame: Frame, state: MDState) -> None:
        """Append one block's frames and rows, then record ``state``."""
        tic = time.perf_counter()
        if self.handles is None:
            self.handles = {name: (self.out / name).open("ab" if self.sizes else "wb") for name in self.names}
            if not self.sizes:
                self.handles["thermo.csv"].write(_thermo_header().encode())
                if self.recorder is not None:
                    self.handles[EXPLAIN_FILE].write(_csv_text([explain_columns(self.recorder.order)]).encode())
                    self.handles[PAIRS_FILE].write(_csv_text([PAIR_COLUMNS]).encode())
        for r in np.flatnonzero(frame.stable):
            self.handles[self.names[r]].write(_extxyz(frame, r, *self.system).encode())
        self.handles["thermo.csv"].write(_thermo_rows(frame).encode())
        record = None if self.recorder is None else self.recorder(frame, state)
        if record is not None:
            for name, rows in zip((EXPLAIN_FILE, PAIRS_FILE), _explain_rows(record)):
                self.handles[name].write(rows.encode())
        for f in self.handles.values():
            f.flush()
        self.sizes = {name: f.tell() for name, f in self.handles.items()}
        state.save(self.out / RESTART_FILE, {"settings": self.settings, "files": self.sizes, "blocks": self.blocks + 1,
                                             "write_seconds": self.write_seconds + time.perf_counter() - tic})
        self.blocks += 1
        write_json(self.out / "stability.json", self._provisional(state))
        self.write_seconds += time.perf_counter() - tic

    def _provisional(self, state: MDState) -> dict:
        """The cheap stability.json of a running run: the driver's verdict so far."""
        times = [float(t) for t in state.unstable_time_ps if np.isfinite(t)]
        return {"status": "running",
                "simulated_time_ps": state.steps_done * self.settings["config"]["dt_fs"] / 1000.0,
                "requested_time_ps": self.requested_time_ps, "stable": not times,
                "time_to_instability_ps": min(times) if times else None,
                "replicas": [{"time_to_instability_ps": t, "stop_reason": reason}
                             for t, reason in zip(state.unstable_time_ps, state.stop_reason)],
                **self.settings, "units": UNITS}

    def close(self) -> None:
        for f in (self.handles or {}).values():
            f.close()


_MASS_EXAMPLE = "e.g. --mass 18.015 for every bead, or --mass 1:18.015,2:16.043 per species"


def parse_masses(text: str) -> float | dict[int, float]:
    """The value of ``jaxrel md --mass``: one mass for every atom (``"18.015"``) or one per
    species (``"1:18.015,2:16.043"``, species ids as in the data), in amu.

    Returns:
        A float, or ``{species: mass}`` with int keys and float values.

    Raises:
        ValueError: a mass that is not a positive finite number, an item that is not Z:M with
            an integer Z ≥ 1, or a species given twice; one sentence that names ``--mass``.
    """
    def mass(value: str) -> float:
        try:
            m = float(value)
        except ValueError:
            m = math.nan
        if not (math.isfinite(m) and m > 0):
            raise ValueError(f"--mass {text!r}: {value.strip()!r} is not a positive mass in amu; {_MASS_EXAMPLE}")
        return m

    if ":" not in text:
        return mass(text)
    masses = {}
    for item in text.split(","):
        z, colon, value = item.partition(":")
        if not (colon and z.strip().isdecimal() and int(z) >= 1):
            raise ValueError(f"--mass {text!r}: {item.strip()!r} is not Z:M with a species Z ≥ 1 and a mass M "
                             f"in amu; {_MASS_EXAMPLE}")
        if int(z) in masses:
            raise ValueError(f"--mass {text!r} gives species {int(z)} twice; give each species once")
        masses[int(z)] = mass(value)
    return masses


def resolve_masses(species, masses=None, *, data_masses=None, coarse_grained: bool = False,
                   source: str = "the data") -> np.ndarray:
    """The masses of an MD run: ``masses`` if given, else ``data_masses``, else the standard
    atomic mass of each species (``ase.data.atomic_masses``) — the last never for
    coarse-grained beads, whose species ids (type + 1) are not atomic numbers.

    Args:
        species: (n_atoms,) int atomic numbers or bead ids.
        masses: None, one mass for every atom, or ``{species: mass}`` covering exactly the
            species present (:func:`parse_masses`), amu.
        data_masses: (n_atoms,) float, amu, or None (:attr:`jaxrel.data.Frames.masses`).
        coarse_grained: the species are bead ids (:attr:`jaxrel.data.Frames.coarse_grained`).
        source: the data's name, for messages.

    Returns:
        (n_atoms,) float64, amu.

    Raises:
        ValueError: a mass that is not positive and finite; ``{species: mass}`` that misses a
            species present or names one absent; with neither ``masses`` nor ``data_masses``,
            coarse-grained beads, or species that are no element (1–118). One sentence that
            names ``--mass``.
    """
    species = np.asarray(species).astype(np.int64)
    present = sorted(set(species.tolist()))
    if isinstance(masses, dict):
        missing = [z for z in present if z not in masses]
        absent = [z for z in masses if z not in present]
        if missing or absent:
            raise ValueError(f"--mass gives species {', '.join(map(str, sorted(masses)))} but {source} holds species "
                             f"{', '.join(map(str, present))}; give Z:M for exactly those")
        masses = np.array([masses[z] for z in species.tolist()], dtype=np.float64)
    elif masses is not None:
        masses = np.full(len(species), masses, dtype=np.float64)
    elif data_masses is not None:
        masses = np.asarray(data_masses, dtype=np.float64)
    elif coarse_grained:
        raise ValueError(f"{source} holds coarse-grained beads of unknown mass (their species ids are not elements, "
                         "and no sidecar .json names the molecule); pass --mass M in amu for every bead, or --mass "
                         "Z:M,Z:M per species")
    else:
        unknown = [z for z in present if not 1 <= z < len(ase.data.atomic_masses)]
        if unknown:
            raise ValueError(f"species {unknown[0]} of {source} is not a chemical element, so it has no standard "
                             f"mass; pass --mass ({_MASS_EXAMPLE})")
        masses = ase.data.atomic_masses[species]
    if not (np.isfinite(masses) & (masses > 0)).all():
        raise ValueError(f"--mass gives {masses[~(np.isfinite(masses) & (masses > 0))][0]} amu; masses must be "
                         f"positive finite numbers ({_MASS_EXAMPLE})")
    return masses


def _mass_record(species: np.ndarray, masses: np.ndarray) -> dict[str, float] | list[float]:
    """The masses (amu) as a run's settings record them: ``{"Z": mass}`` when the atoms of each
    species share one mass, else one mass per atom."""
    by_species = {int(z): masses[species == z] for z in np.unique(species)}
    if all((m == m[0]).all() for m in by_species.values()):
        return {str(z): float(m[0]) for z, m in by_species.items()}
    return masses.tolist()


def run_md(model, data, out, *, molecule: str | None = None, frame: int = 0, ensemble: str = "nve", temperature_K: float = 300.0,
           dt_fs: float = 0.5, time_ps: float = 10.0, replicas: int = 1, log_every: int = 100,
           friction_per_ps: float = 1.0, tau_fs: float = 100.0, seed: int = 0,
           max_temperature_K: float | None = None, masses=None, explain_every: int | None = None,
           explain_order: int = 2, explain_top: int = 5, overwrite: bool = False,
           restart: bool = False, progress: bool = True, skin: float | None = MDConfig.skin,
           n_devices: int | None = None) -> dict:
    """MD from one frame of a data set with a saved model, written to ``out`` block by block,
    and its stability report: the ``jaxrel md`` command.

    ``replicas`` copies of frame ``frame`` of ``data`` run vmapped (:func:`simulate`; replica
    r with seed + r). After the initial frame and after every block of ``log_every`` steps
    (while the next block runs), ``out`` receives: the new frames of the stable replicas,
    appended to trajectory.extxyz (replica 0) and trajectory_r<k>.extxyz (replica k) in the
    format of :func:`write_trajectory`; their rows, appended to thermo.csv
    (:data:`THERMO_COLUMNS`); restart.npz (the :class:`MDState`, the run's settings and the
    length of every appended file) and a provisional stability.json with status "running"
    (simulated time and the driver's verdict so far), both rewritten atomically. At the end
    stability.json holds the full :func:`jaxrel.stability.stability_report` of the frames on
    disk (:func:`read_run`) against every frame of ``data``, with status "finished", the
    settings, ``requested_time_ps``, ``n_reallocations`` and ``output_seconds_per_block``
    (the writing time of a block, explanations included, which overlaps the integration of
    the next one).

    With ``explain_every`` K, every K steps (the initial frame included) the stable replicas
    are explained as :class:`ExplanationRecorder` describes (GNN-LRP, GI rule, Schnake et al.
    2022, arXiv:2006.03589), and their rows are appended with each block: explain.csv
    (:func:`explain_columns`: the body-order totals Σ R_n, n = 1..``explain_order``, and the
    higher-order residual, eV) and explain_pairs.csv (:data:`PAIR_COLUMNS`: the ``explain_top``
    2-body terms of largest ``|R₂|``), both kept consistent on interruption and restart like
    thermo.csv (:func:`read_explanations` reads them). stability.json then holds ``explain``
    (the settings and the number of records) and per replica ``explanation``: the first and
    the last record before the replica's instability time in the report (or the end), each with
    its totals, residual and top pair, and ``change_eV``, the change of each body-order total
    between them (None when no record precedes the instability).

    Ctrl-C and SIGTERM (SIGTERM raises KeyboardInterrupt only during the run; the previous
    handler is restored) stop the run where it is. The files are then cut back to the last
    block the restart file records (a write stopped half-way leaves nothing), so they hold
    every finished block; stability.json becomes the full report of what was simulated with
    status "interrupted", and :class:`RunInterrupted` is raised.
    ``restart=True`` continues an interrupted run, or extends a finished one to a longer
    ``time_ps``, from its last finished block, exactly as if it had not stopped, appending to
    the same files.

    Args:
        model: checkpoint folder (``jaxrel train``'s OUT/model).
        data: frames of the system (any format :func:`jaxrel.data.read_frames` reads): the
            start frame and the reference of the stability report.
        out: the run folder.
        molecule: the molecule to simulate from a file of several (``jaxrel generate xtb``), by name.
        frame: index of the start frame in ``data`` (of that molecule).
        ensemble, temperature_K, dt_fs, log_every, friction_per_ps, tau_fs, seed, max_temperature_K, skin: as
            in :class:`MDConfig` (K, fs, 1/ps, fs, K, Å).
        time_ps: simulated time of the whole run, ps (n_steps = round(1000 time_ps / dt_fs)).
        replicas: number of replicas R.
        explain_every: steps between explanations (``--explain-every``), a positive multiple of
            ``log_every``; None explains nothing.
        explain_order: the highest body order explained (``--explain-order``), 1 to
            n_interactions + 1.
        explain_top: 2-body terms kept per record and replica (``--explain-top``).
        masses: amu, one value for every atom or ``{species: mass}`` (``--mass``,
            :func:`parse_masses`); None takes the data's masses (:attr:`jaxrel.data.Frames.masses`,
            e.g. the bead masses of the shared CG water and methane sets), else the standard
            masses of the elements (:func:`resolve_masses`). The masses used are part of the
            settings in stability.json (``masses_amu``) and of what ``restart`` compares.
        overwrite: replace an earlier run in ``out`` (its files only, :data:`RUN_FILES`).
        restart: continue the run in ``out``; every setting but ``time_ps`` (and ``n_devices``) must be
            the run's.
        progress: show a progress bar.
        n_devices: shard the replicas over this many devices (``--devices``, :func:`simulate`); None:
            JAX's default device.

    Returns:
        ``{"out", "status", "stable", "time_to_instability_ps", "simulated_time_ps",
        "steps_per_second"}`` (status "finished").

    Raises:
        ValueError: a setting out of range (the message names the ``jaxrel md`` option); data
            of coarse-grained beads of unknown mass without ``masses``, or other masses that
            :func:`resolve_masses` refuses; an
            ``out`` holding an earlier run without ``overwrite`` or ``restart`` (nothing is
            changed); ``restart`` without a restart file in ``out``, with a model, data or
            settings other than the run's, with a ``time_ps`` already simulated or with every
            replica unstable; a negative ``skin``; an ``n_devices`` JAX does not have; explanation
            settings that :class:`ExplanationRecorder` refuses
            (an ``explain_every`` that is not a multiple of ``log_every``, an order above
            n_interactions + 1, a model without message-passing layers); and the errors of
            :func:`simulate`, all checked before the first file is written.
        FileNotFoundError: a missing model or data file.
        RunInterrupted: Ctrl-C or SIGTERM (a KeyboardInterrupt); its report is on disk.
        KeyboardInterrupt: Ctrl-C or SIGTERM before the initial frame was written; nothing
            is left in ``out``.
    """
    from jaxrel.stability import stability_report

    out = Path(out)
    if replicas < 1:
        raise ValueError(f"--replicas is {replicas}; run at least 1")
    if not (math.isfinite(time_ps) and math.isfinite(dt_fs) and time_ps > 0 and dt_fs > 0):
        raise ValueError(f"--time is {time_ps} ps and --dt is {dt_fs} fs; both must be positive")
    if not (math.isfinite(temperature_K) and temperature_K > 0):
        raise ValueError(f"--temperature is {temperature_K} K; give a positive temperature in kelvin")
    if int(log_every) != log_every or log_every < 1:
        raise ValueError(f"--log-every is {log_every}; log a frame every 1 or more steps")
    if max_temperature_K is not None and not max_temperature_K > temperature_K:
        raise ValueError(f"--max-temperature is {max_temperature_K} K; it must exceed --temperature "
                         f"{temperature_K} K (default: 10 × --temperature)")
    if restart and overwrite:
        raise ValueError("--restart continues the run in --out and --overwrite replaces it; pass one of them")
    n_steps = round(time_ps * 1000 / dt_fs)
    if n_steps < 1:
        raise ValueError(f"--time {time_ps} ps is shorter than one --dt {dt_fs} fs step; "
                         "simulate longer or use a smaller step")
    if skin is not None and not (math.isfinite(skin) and skin >= 0):
        raise ValueError(f"--skin is {skin} Å; give a Verlet skin ≥ 0 Å (0 rebuilds the neighbour list at every step)")
    if n_devices is not None:
        select_devices(n_devices)     # raises for a count JAX does not have, before --out is touched
    config = MDConfig(ensemble, dt_fs=dt_fs, temperature_K=temperature_K, n_steps=n_steps,
                      log_every=log_every, friction_per_ps=friction_per_ps, tau_fs=tau_fs, seed=seed,
                      max_temperature_K=max_temperature_K, skin=skin)
    potential, params, _ = load_checkpoint(model)
    potential.check_energy_target("molecular dynamics")     # before --out is touched
    frames = read_frames(data, molecule=molecule)
    positions, cell = frames.geometry(frame)
    start_positions = np.broadcast_to(positions, (replicas, *positions.shape))
    masses_amu = resolve_masses(frames.species, masses, data_masses=frames.masses,
                                coarse_grained=frames.coarse_grained, source=str(data))
    _, species, cell, masses_amu, _ = _checked_inputs(potential, start_positions, frames.species, cell, masses_amu,
                                                      None)
    recorder = None if explain_every is None else ExplanationRecorder(
        potential, params, species, config=config, every=explain_every, order=explain_order, top=explain_top,
        cell=cell)
    settings = {"model": str(model), "params_sha256": params_digest((Path(model) / "params.msgpack").read_bytes()),
                "data": str(data), "molecule": molecule, "data_sha256": _frames_digest(frames), "frame": frame, "n_replicas": replicas,
                "masses_amu": _mass_record(species, masses_amu),
                "config": {k: v for k, v in dataclasses.asdict(config).items() if k != "n_steps"},
                **{f"explain_{k}": None if recorder is None else getattr(recorder, k) for k in _EXPLAIN_SETTINGS}}
    state, metadata = None, {"files": None, "blocks": 0, "write_seconds": 0.0}
    if restart:
        state, metadata = _restart_state(out, settings, config)
        _truncate(out, metadata["files"])
    else:
        prepare_output(out, RUN_FILES, overwrite=overwrite)

    status = "finished"
    files = _RunFiles(out, settings, (species, cell, masses_amu), time_ps, metadata["files"], metadata["blocks"],
                      metadata["write_seconds"], recorder)
    with _sigterm_interrupts():
        try:
            simulate(potential, params, start_positions, species, cell=cell, config=config,
                     progress=progress, on_block=files.write, start=state, n_devices=n_devices)
        except KeyboardInterrupt:
            status = "interrupted"
        finally:
            files.close()
    if status == "interrupted" and not (out / RESTART_FILE).is_file():
        for name in files.names:   # a first block stopped half-way
            (out / name).unlink(missing_ok=True)
        raise KeyboardInterrupt("no frame was finished, so nothing was written")

    state, metadata = MDState.load(out / RESTART_FILE)
    _truncate(out, metadata["files"])
    report = stability_report(read_run(out), frames.positions, frames.species, cell, molecule=cell is None,
                              ensemble=ensemble)
    report = {"status": status, **report, "requested_time_ps": time_ps,
              "output_seconds_per_block": metadata["write_seconds"] / metadata["blocks"],
              "n_reallocations": state.n_reallocations, "model": str(model), "data": str(data),
              "frame": frame, "masses_amu": settings["masses_amu"],
              "config": dataclasses.asdict(config) | {"n_replicas": replicas}, "units": UNITS}
    if recorder is not None:
        explanations = read_explanations(out)
        report["explain"] = {"every_steps": recorder.every, "order": recorder.order, "top": recorder.top,
                             "rule": EXPLAIN_RULE, "n_records": len(explanations.time_ps)}
        for r, entry in enumerate(report["replicas"]):
            entry["explanation"] = _explanation_summary(explanations, r, entry["time_to_instability_ps"])
    write_json(out / "stability.json", report)
    if status == "interrupted":
        raise RunInterrupted(f"stopped at {report['simulated_time_ps']:.4g} of {time_ps:.4g} ps; every "
                             f"finished block is in {out} (trajectories, thermo.csv, stability.json with status "
                             "'interrupted'); continue the run with the same settings and --restart", report)
    return {"out": str(out), "status": status, "stable": report["stable"],
            "time_to_instability_ps": report["time_to_instability_ps"],
            "simulated_time_ps": report["simulated_time_ps"], "steps_per_second": report["steps_per_second"]}


def _frames_digest(frames) -> str:
    """SHA-256 (hex) of a data set's species, positions and cell: its identity for --restart."""
    digest = hashlib.sha256()
    for array in (frames.species, frames.positions, frames.cell):
        digest.update(b"" if array is None else np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _restart_state(out: Path, settings: dict, config: MDConfig) -> tuple[MDState, dict]:
    """The saved state and metadata of the run in ``out``, or ValueError when it cannot be
    continued with these ``settings`` to ``config.n_steps``."""
    path = out / RESTART_FILE
    if not path.is_file():
        raise ValueError(f"--restart: {out} holds no {RESTART_FILE} of an earlier run; run without "
                         "--restart to start one")
    state, metadata = MDState.load(path)
    saved = metadata.get("settings", {})
    for key, what in (("params_sha256", "model"), ("data_sha256", "data")):
        if saved.get(key) != settings[key]:
            raise ValueError(f"--restart: the run in {out} used the {what} {saved.get(what)}, and --{what} "
                             f"{settings[what]} is not the same; pass the run's {what} or start a new run")
    given = json.loads(json.dumps(settings))

    def flat(s: dict) -> dict:
        return {"frame": s.get("frame"), "replicas": s.get("n_replicas"), "masses_amu": s.get("masses_amu"),
                **s.get("config", {}), **{f"explain_{k}": s.get(f"explain_{k}") for k in _EXPLAIN_SETTINGS}}

    differ = [k for k in flat(given) if flat(saved).get(k) != flat(given)[k]]
    if differ:
        raise ValueError(f"--restart: the run in {out} has {', '.join(f'{k}={flat(saved).get(k)}' for k in differ)}, "
                         f"not {', '.join(f'{k}={flat(given)[k]}' for k in differ)}; repeat the run's settings "
                         "(only --time may change)")
    done_ps = state.steps_done * config.dt_fs / 1000.0
    if state.steps_done >= config.n_steps:
        raise ValueError(f"--restart: the run in {out} has simulated {done_ps:.6g} ps already; pass a longer "
                         "--time to continue it")
    if not state.active.any():
        raise ValueError(f"--restart: every replica of the run in {out} became unstable by {done_ps:.6g} ps; "
                         "there is nothing to continue")
    return state, metadata
