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

The neighbour list is a sparse ``jax_md.partition`` list rebuilt at every energy and force
evaluation by a dense O(n_atoms²) pair search (no cell list, no skin), so every graph holds
exactly the pairs within the cutoff; this suits the molecules and boxes of up to a few
thousand atoms jaxrel trains on. Replicas run in one jitted, vmapped simulation; the host
checks neighbour-list overflow and stability every ``log_every`` steps.

Units: Å, fs (times in trajectories: ps), eV, K, amu; velocities Å/fs. Internally masses
are in eV fs²/Å² (:data:`AMU`), so that F = m a holds with forces in eV/Å.
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass
from pathlib import Path

import ase.data
import ase.units
import jax
import jax.numpy as jnp
import numpy as np
from jax_md import simulate as jmd
from tqdm import tqdm

from jaxrel.geometry import check_cell
from jaxrel.graph import cell_key, check_positions, graph_from_neighbors, neighbor_list_fn

AMU = ase.units._amu * 1e10 / ase.units._e
"""1 amu in eV fs²/Å² (≈ 103.6427): amu · (Å/fs)² = _amu kg · (1e5 m/s)² = _amu · 1e10 J."""

KB = ase.units.kB
"""Boltzmann constant k_B, eV/K (ase.units)."""

ENSEMBLES = ("nve", "nvt-nh", "nvt-langevin")


@dataclass(frozen=True)
class MDConfig:
    """Settings of one MD run.

    Attributes:
        ensemble: ``"nve"``, ``"nvt-nh"`` (Nosé–Hoover chain) or ``"nvt-langevin"``.
        dt_fs: time step, fs.
        temperature_K: temperature of the initial Maxwell–Boltzmann velocities and the
            thermostat target, K.
        n_steps: number of integration steps.
        log_every: steps per jitted block; one frame is logged per block (the last block
            is shorter when ``n_steps`` is not a multiple).
        friction_per_ps: Langevin friction γ, 1/ps.
        tau_fs: Nosé–Hoover chain time constant, fs.
        seed: PRNG seed; replica r uses ``seed + r``.
        capacity_multiplier: neighbour-list capacity as a multiple of the pairs found at
            allocation (≥ 1); overflows are reallocated and the block redone.
        max_temperature_K: a replica whose temperature exceeds this is unstable; None
            means 10 × ``temperature_K`` (see :attr:`temperature_limit_K`).

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
        if self.max_temperature_K is not None and not self.max_temperature_K > self.temperature_K:
            raise ValueError(f"max_temperature_K is {self.max_temperature_K} K; it must exceed "
                             f"temperature_K = {self.temperature_K} K (or be None for 10×)")

    @property
    def temperature_limit_K(self) -> float:
        """The instability threshold: ``max_temperature_K``, or 10 × ``temperature_K``."""
        return 10.0 * self.temperature_K if self.max_temperature_K is None else self.max_temperature_K


@dataclass
class Trajectory:
    """The logged frames of R replicas (R = 1 for a single run).

    Frame 0 is the initial state; frame k follows block k of ``log_every`` steps. A
    replica that became unstable at ``unstable_time_ps[r]`` is frozen: its later frames
    repeat its last stable frame (every array is finite), so keep the frames with
    ``time_ps < unstable_time_ps[r]``. The run ends early when every replica is unstable;
    the frames then stop at the last block in which one was still stable.

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
                           together count as one step), compilation excluded
        n_reallocations    int | neighbour-list reallocations after overflows
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

    ``extra_capacity`` is per atom (JAX MD's sparse convention).
    """
    lists = [neighbor_fn.allocate(p, extra_capacity=extra_capacity) for p in positions]
    return _update_all(max(lists, key=lambda nbrs: nbrs.max_occupancy), positions)


def _energy_fn(potential, physics: dict):
    """``energy_fn(position, neighbor, params)``: the model's energy (eV) of one replica on the
    graph of ``neighbor`` updated at ``position`` (receivers = idx[0], senders = idx[1])."""
    species, cell = physics["species"], physics["cell"]

    def energy_fn(position, neighbor, params):
        graph = graph_from_neighbors(position, species, neighbor.update(position).idx, cell)
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


CHECKS = ("positions", "forces", "energy")
"""What must stay finite, in the order :func:`_instability` reports it."""


def _block(potential, ensemble, shift, physics, states, nbrs, params, n_steps, first, active):
    """``n_steps`` steps of every replica, after a step of length 0 if ``first``.

    A step of length 0 moves nothing and only sets the forces, so ``first`` (with
    ``n_steps=0``) turns the states of :func:`_start` into the initial frame. Replicas not
    ``active``, or not stable afterwards (a non-finite :data:`CHECKS` entry or a temperature
    above ``physics["t_max"]``), keep their old state. Returns ``(states, nbrs, observations,
    stable, overflow)``; observations hold ``temperature_K``, the energies (eV) and
    ``finite`` (R, len(CHECKS)).
    """
    energy_fn = _energy_fn(potential, physics)
    conserved_fn = _integrator(ensemble, energy_fn, shift, physics)[2]

    def one(state, nbr):
        def step(i, carry):
            state, nbr = carry
            dt = jnp.where(first & (i == 0), jnp.zeros_like(physics["dt"]), physics["dt"])
            apply_fn = _integrator(ensemble, energy_fn, shift, physics | {"dt": dt})[1]
            state = apply_fn(state, neighbor=nbr, params=params)
            return state, nbr.update(state.position)

        state, nbr = jax.lax.fori_loop(0, n_steps + first, step, (state, nbr))
        e_pot = energy_fn(state.position, neighbor=nbr, params=params)
        e_kin = jmd.kinetic_energy(state)
        finite = jnp.stack([jnp.isfinite(state.position).all(), jnp.isfinite(state.force).all(),
                            jnp.isfinite(e_pot) & jnp.isfinite(e_kin)])
        return state, nbr, {"temperature_K": jmd.temperature(state) / KB, "potential_energy_eV": e_pot,
                            "kinetic_energy_eV": e_kin, "conserved_eV": conserved_fn(state, e_pot),
                            "finite": finite}

    new_states, new_nbrs, obs = jax.vmap(one)(states, nbrs)
    stable = obs["finite"].all(axis=1) & (obs["temperature_K"] <= physics["t_max"])
    keep = active & stable

    def select(new, old):
        return jnp.where(keep.reshape(keep.shape + (1,) * (new.ndim - 1)), new, old)

    return (jax.tree.map(select, new_states, states), jax.tree.map(select, new_nbrs, nbrs), obs,
            stable, new_nbrs.did_buffer_overflow != 0)


_EXECUTABLES: dict = {}
_MAX_EXECUTABLES = 32


def _executable(fn, static: tuple, args: tuple):
    """``fn`` compiled for the ``static`` leading arguments and the shapes of ``args``.

    Compiled ahead of time (so callers can time runs without compilation) and kept in a
    small per-process cache, oldest dropped first. Call the result with ``args``.
    """
    leaves, treedef = jax.tree.flatten(args)
    key = (fn, static, treedef, tuple((x.shape, x.dtype) for x in map(jnp.asarray, leaves)))
    if key not in _EXECUTABLES:
        if len(_EXECUTABLES) >= _MAX_EXECUTABLES:
            _EXECUTABLES.pop(next(iter(_EXECUTABLES)))
        _EXECUTABLES[key] = jax.jit(fn, static_argnums=tuple(range(len(static)))).lower(
            *static, *args).compile()
    return _EXECUTABLES[key]


def simulate(potential, params, positions, species, *, cell=None, masses=None,
             config: MDConfig = MDConfig(), velocities=None, progress: bool = True) -> Trajectory:
    """Run MD of one structure, or of R replicas vmapped in one jitted simulation.

    Replica r draws its velocities (and Langevin noise) from ``config.seed + r``, so it
    equals a single run with that seed and starting positions. Every ``log_every`` steps
    the host (1) redoes the block from its saved start after reallocating the neighbour
    list if it overflowed (the trajectory equals one run with ample capacity), (2) marks
    replicas with non-finite positions, forces or energies, or a temperature above
    ``config.temperature_limit_K``, as unstable and freezes them (see :class:`Trajectory`),
    and (3) logs a frame. The run stops when every replica is unstable. Compiled code is
    reused by later runs of the same model, ensemble, system size and cell.

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

    Returns:
        :class:`Trajectory` with 1 + ⌈n_steps / log_every⌉ frames (fewer if all replicas
        became unstable).

    Raises:
        ValueError: positions of the wrong shape, non-finite or closer than 0.1 Å; species
            the model does not know; a cell of the wrong shape or narrower than twice the
            cutoff; bad masses or velocities; a float64 model without x64; a start that is
            already unstable (non-finite model output or temperature above the limit).
    """
    dtype = _model_dtype(potential)
    pos, species, cell, masses_amu, vel = _checked_inputs(potential, positions, species, cell,
                                                          masses, velocities)
    n_replicas, n_atoms = pos.shape[:2]
    shift, neighbor_fn = neighbor_list_fn(potential.config.cutoff, cell_key(cell),
                                          config.capacity_multiplier, dtype.name)
    t_max = config.temperature_limit_K
    scalars = {"dt": config.dt_fs, "kT": KB * config.temperature_K, "t_max": t_max,
               "gamma": config.friction_per_ps / 1000.0, "tau": config.tau_fs}
    physics = {k: jnp.asarray(v, dtype) for k, v in scalars.items()}
    physics |= {"species": jnp.asarray(species), "mass": jnp.asarray(masses_amu * AMU, dtype),
                "cell": None if cell is None else jnp.asarray(cell, dtype)}
    static = (potential, config.ensemble, shift)

    positions_j = jnp.asarray(pos, dtype)
    nbrs = _allocate(neighbor_fn, positions_j)
    keys = jnp.stack([jax.random.PRNGKey(config.seed + r) for r in range(n_replicas)])
    momenta = None if vel is None else jnp.asarray(vel * masses_amu[:, None] * AMU, dtype)
    args = (physics, keys, positions_j, momenta)
    states = _executable(_start, static[1:], args)(*args)
    active = np.ones(n_replicas, bool)
    args = (physics, states, nbrs, params, jnp.int32(0), jnp.asarray(True), jnp.asarray(active))
    states, nbrs, obs, _, _ = _executable(_block, static, args)(*args)
    for r in range(n_replicas):
        reason = _instability(obs, r, t_max)
        if reason is not None:
            raise ValueError(f"replica {r} is unstable at the start ({reason}); check the structure "
                             "and velocities or raise max_temperature_K")
    log = _Log(states, obs)

    unstable_time = np.full(n_replicas, np.nan)
    stop_reason: list[str | None] = [None] * n_replicas
    n_reallocations, wall, steps_done = 0, 0.0, 0
    sizes = [config.log_every] * (config.n_steps // config.log_every)
    sizes += [config.n_steps % config.log_every] if config.n_steps % config.log_every else []
    bar = tqdm(sizes, desc=f"MD {config.ensemble}", unit="block", disable=not progress)
    for n_steps in bar:
        while True:
            args = (physics, states, nbrs, params, jnp.int32(n_steps), jnp.asarray(False), jnp.asarray(active))
            run_block = _executable(_block, static, args)
            tic = time.perf_counter()
            new_states, new_nbrs, obs, stable, overflow = jax.block_until_ready(run_block(*args))
            wall += time.perf_counter() - tic
            if not (np.asarray(overflow) & active).any():
                break
            # at least double the capacity, so a block overflows a bounded number of times
            nbrs = _allocate(neighbor_fn, states.position, extra_capacity=-(-nbrs.max_occupancy // n_atoms))
            n_reallocations += 1
        steps_done += n_steps
        t_ps = steps_done * config.dt_fs / 1000.0
        for r in np.flatnonzero(active & ~np.asarray(stable)):
            active[r], unstable_time[r] = False, t_ps
            stop_reason[r] = f"{_instability(obs, r, t_max)} at {t_ps:.4g} ps"
        if not active.any():
            break
        states, nbrs = new_states, new_nbrs
        log.append(states, obs, active, t_ps)
        bar.set_postfix(T=f"{log.last('temperature_K', active):.0f} K",
                        E=f"{log.last('conserved_eV', active):.5g} eV")
    bar.close()
    return log.trajectory(species=species, cell=cell, masses_amu=masses_amu,
                          unstable_time_ps=unstable_time, stop_reason=stop_reason,
                          steps_per_second=steps_done / wall if wall > 0 else float("nan"),
                          n_reallocations=n_reallocations)


def _instability(obs: dict, r: int, t_max: float) -> str | None:
    """Why replica ``r`` of the observations ``obs`` is unstable, or None (the block's
    ``stable`` criterion in words)."""
    for what, finite in zip(CHECKS, np.asarray(obs["finite"][r])):
        if not finite:
            return f"non-finite {what}"
    temperature = float(obs["temperature_K"][r])
    return f"temperature {temperature:.0f} K > {t_max:.0f} K" if temperature > t_max else None


class _Log:
    """Host-side frames; a frozen replica repeats its last stable values."""

    FIELDS = ("temperature_K", "potential_energy_eV", "kinetic_energy_eV", "conserved_eV")

    def __init__(self, states, obs):
        self.time_ps = [0.0]
        self.frames = {"positions": [np.asarray(states.position, np.float64)],
                       "velocities": [np.asarray(states.velocity, np.float64)]}
        self.frames |= {k: [np.asarray(obs[k], np.float64)] for k in self.FIELDS}

    def append(self, states, obs, active: np.ndarray, t_ps: float) -> None:
        self.time_ps.append(t_ps)
        self.frames["positions"].append(np.asarray(states.position, np.float64))
        self.frames["velocities"].append(np.asarray(states.velocity, np.float64))
        for k in self.FIELDS:
            self.frames[k].append(np.where(active, np.asarray(obs[k], np.float64), self.frames[k][-1]))

    def last(self, field: str, active: np.ndarray) -> float:
        return float(np.mean(self.frames[field][-1][active]))

    def trajectory(self, **fields) -> Trajectory:
        """The :class:`Trajectory` of the logged frames and the run's other ``fields``."""
        arrays = {k: np.stack(v, axis=1) for k, v in self.frames.items()}
        return Trajectory(**arrays, time_ps=np.asarray(self.time_ps), **fields)


def write_trajectory(traj: Trajectory, path, replica: int = 0) -> None:
    """Write the stable frames of one replica as extended XYZ (readable by ``ase.io.read``).

    Each frame stores positions (Å), velocities (as ASE momenta; ``get_velocities()`` ×
    ``ase.units.fs`` gives Å/fs), masses (amu), the cell and pbc, the potential energy
    (eV, as the calculator energy) and ``time_ps``, ``temperature_K``,
    ``kinetic_energy_eV`` and ``conserved_eV`` in ``atoms.info``.

    Raises:
        ValueError: ``replica`` does not exist.
    """
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator

    images = []
    for k in traj.stable_frames(replica):
        atoms = ase.Atoms(numbers=traj.species, positions=traj.positions[replica, k],
                          cell=traj.cell, pbc=traj.cell is not None, masses=traj.masses_amu)
        atoms.set_velocities(traj.velocities[replica, k] / ase.units.fs)
        atoms.info.update(time_ps=float(traj.time_ps[k]),
                          temperature_K=float(traj.temperature_K[replica, k]),
                          kinetic_energy_eV=float(traj.kinetic_energy_eV[replica, k]),
                          conserved_eV=float(traj.conserved_eV[replica, k]))
        atoms.calc = SinglePointCalculator(atoms, energy=float(traj.potential_energy_eV[replica, k]))
        images.append(atoms)
    ase.io.write(path, images, format="extxyz")


THERMO_COLUMNS = ("replica", "time_ps", "temperature_K", "potential_energy_eV", "kinetic_energy_eV",
                  "conserved_eV")


def write_thermo(traj: Trajectory, path) -> None:
    """Write the stable frames of every replica as CSV with the columns :data:`THERMO_COLUMNS`."""
    with Path(path).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(THERMO_COLUMNS)
        for r in range(traj.positions.shape[0]):
            for k in traj.stable_frames(r):
                writer.writerow([r, repr(float(traj.time_ps[k]))] + [
                    repr(float(getattr(traj, c)[r, k])) for c in THERMO_COLUMNS[2:]])
