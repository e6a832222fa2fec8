"""Molecular dynamics: conservation laws, neighbour-list reallocation, replicas, thermostats,
instability handling, output files, the ``jaxrel md`` command line, and runs written block by
block that survive interruption and continue exactly with --restart.

Compiled MD code is cached per (model, ensemble, system size, cell, capacity), so the tests
share small systems: an O–H–H molecule (free space, 6 directed edges at any geometry) and
8 argon atoms in a periodic box.
"""

import json
import os
import signal
from dataclasses import dataclass, replace

import ase.data
import ase.io
import ase.units
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import argon_potential, liquid, morse_dimers, small_potential
import jaxrel.md as md
from jaxrel.checkpoint import save_checkpoint
from jaxrel.cli import main
from jaxrel.graph import edge_lengths
from jaxrel.md import (THERMO_COLUMNS, MDConfig, MDState, Trajectory, parse_masses, resolve_masses, simulate,
                       write_thermo, write_trajectory)
from jaxrel.models import Potential
from jaxrel.stability import STRUCTURE_KEYS, stability_report, time_to_collapse

WATER = np.array([[0.0, 0, 0], [0.97, 0, 0], [-0.25, 0.93, 0]])
WATER_SPECIES = np.array([8, 1, 1])


@pytest.fixture(scope="module")
def molecule():
    return small_potential()


BOX = 10.0  # capacity multiplier of the argon-box neighbour lists: all 56 pairs, no reallocation


@pytest.fixture(scope="module")
def argon():
    potential, params = argon_potential("schnet")
    return potential, params, liquid()


def test_nve_energy_error_is_second_order_in_the_time_step(molecule):
    """Velocity Verlet conserves a shadow Hamiltonian H̃ = H + O(dt²), so the fluctuation of
    E_pot + E_kin over the same 200 fs must shrink 4× (3.6–4.4 allowed) when dt halves;
    a force that is not −∇E would leave an O(1) error that does not shrink. For a mode of
    angular frequency ω the relative error is about (ω dt)²/4, below 1e-3 at dt = 0.25 fs
    for periods above 25 fs — this random model's motions are slower (E_pot varies over
    ~100 fs), so the fluctuation must stay under 1e-3 of the energy exchanged, ptp(E_pot)."""
    potential, params = molecule
    ptp = {}
    for dt in (0.25, 0.125):
        n_steps = round(200 / dt)
        traj = simulate(potential, params, WATER, WATER_SPECIES, progress=False,
                        config=MDConfig(dt_fs=dt, n_steps=n_steps, log_every=n_steps // 40))
        assert traj.time_ps[-1] == pytest.approx(0.2) and traj.positions.shape == (1, 41, 3, 3)
        assert traj.cell is None and traj.stop_reason == [None] and np.isnan(traj.unstable_time_ps).all()
        ptp[dt] = np.ptp(traj.conserved_eV[0])
        exchanged = np.ptp(traj.potential_energy_eV[0])
        assert ptp[dt] < 1e-3 * exchanged
    assert 3.6 < ptp[0.25] / ptp[0.125] < 4.4


def test_nose_hoover_conserves_its_extended_energy_while_the_system_energy_changes(molecule):
    """The chain moves energy in and out of the molecule, so E_pot + E_kin changes by ~k_B T
    per degree of freedom, while the extended energy H' has only the O(dt²) integration
    error bounded as in the NVE test (< 1e-3 of the system's energy change)."""
    potential, params = molecule
    traj = simulate(potential, params, WATER, WATER_SPECIES, progress=False,
                    config=MDConfig("nvt-nh", dt_fs=0.25, n_steps=1000, log_every=25, tau_fs=20.0))
    system = traj.potential_energy_eV[0] + traj.kinetic_energy_eV[0]
    assert np.ptp(system) > 3 * ase.units.kB * 300
    assert np.ptp(traj.conserved_eV[0]) < 1e-3 * np.ptp(system)


def test_overflow_reallocates_and_redoes_the_block_so_the_trajectory_matches_ample_capacity(argon):
    """Six argon atoms on a ring fly inwards until next-nearest neighbours are within the 4 Å
    cutoff: the list allocated at the start (capacity exactly its 12 directed ring pairs)
    overflows; the result must equal a run whose list holds all 30 pairs from the start."""
    potential, params, _ = argon
    angle = np.arange(6) * np.pi / 3
    ring = 3.4 * np.stack([np.cos(angle), np.sin(angle), np.zeros(6)], axis=1)
    inwards = -0.0037 * ring / 3.4
    species = np.full(6, 18)
    run = {}
    for multiplier in (1.0, 100.0):
        run[multiplier] = simulate(potential, params, ring, species, velocities=inwards, progress=False,
                                   config=MDConfig(dt_fs=4.0, n_steps=120, log_every=20,
                                                   capacity_multiplier=multiplier))
    small, ample = run[1.0], run[100.0]
    assert small.n_reallocations >= 1 and ample.n_reallocations == 0
    final = small.positions[0, -1]
    assert (np.linalg.norm(final[:, None] - final[None], axis=-1) < 4.0).sum() - 6 == 24
    np.testing.assert_allclose(small.positions, ample.positions, rtol=0, atol=1e-10)
    np.testing.assert_allclose(small.conserved_eV, ample.conserved_eV, rtol=0, atol=1e-10)


@pytest.fixture(scope="module")
def langevin_runs(argon):
    """Two argon boxes from rest: vmapped as replicas and as two single runs."""
    potential, params, _ = argon
    starts = np.stack([liquid(seed=0).positions, liquid(seed=1).positions])
    atoms = liquid()
    config = MDConfig("nvt-langevin", dt_fs=4.0, temperature_K=120.0, n_steps=2000, log_every=50,
                      friction_per_ps=10.0, seed=3, capacity_multiplier=BOX)
    common = dict(cell=atoms.cell.array, config=config, progress=False)
    replicas = simulate(potential, params, starts, atoms.numbers, velocities=np.zeros_like(starts), **common)
    singles = [simulate(potential, params, starts[r], atoms.numbers, velocities=np.zeros((8, 3)),
                        **common | {"config": replace(config, seed=3 + r)})
               for r in range(2)]
    return replicas, singles


def test_vmapped_replicas_equal_separate_runs_with_their_seeds_and_starts(langevin_runs):
    replicas, singles = langevin_runs
    assert replicas.positions.shape == (2, 41, 8, 3)
    for r, single in enumerate(singles):
        np.testing.assert_allclose(replicas.positions[r], single.positions[0], rtol=0, atol=1e-10)
        np.testing.assert_allclose(replicas.temperature_K[r], single.temperature_K[0], rtol=1e-9)


def test_langevin_heats_atoms_from_rest_to_the_target_temperature(langevin_runs):
    """γ = 10/ps relaxes E_kin within 1/(2γ) = 50 fs, so frames 200 fs apart are independent;
    24 degrees of freedom give a per-frame relative spread √(2/24) ≈ 0.29, so the mean of 2 × 20
    frames after 4 ps is within 20% (≈ 4σ) of 120 K."""
    replicas, _ = langevin_runs
    assert (replicas.temperature_K[:, 0] == 0).all()
    assert replicas.temperature_K[:, 21:].mean() == pytest.approx(120.0, rel=0.2)


def test_periodic_box_nve_conserves_energy_across_the_boundaries(argon):
    """Atoms cross the cell faces (positions are not wrapped); a pair missed by the
    minimum-image neighbour list would make E jump by ~ its pair energy, ≫ the O(dt²) error
    (< 1e-3 of ptp(E_pot), as in the molecule test, at dt = 5 fs for 40-amu argon)."""
    potential, params, atoms = argon
    traj = simulate(potential, params, atoms.positions, atoms.numbers, cell=atoms.cell.array,
                    progress=False, config=MDConfig(dt_fs=5.0, n_steps=1000, log_every=50, capacity_multiplier=BOX))
    np.testing.assert_array_equal(traj.cell, atoms.cell.array)
    assert np.ptp(traj.conserved_eV[0]) < 1e-3 * np.ptp(traj.potential_energy_eV[0])


def test_a_huge_time_step_stops_the_run_with_a_clear_reason_and_no_nan_frames(argon):
    potential, params, atoms = argon
    traj = simulate(potential, params, atoms.positions, atoms.numbers, cell=atoms.cell.array,
                    progress=False, config=MDConfig(dt_fs=200.0, n_steps=1000, log_every=50, capacity_multiplier=BOX))
    t = traj.unstable_time_ps[0]
    assert np.isfinite(t) and t < 200.0
    reason = traj.stop_reason[0]
    assert reason.startswith("temperature") and "K > 3000 K (conserved energy off by" in reason
    assert reason.endswith(f"kinetic energy gained) at {t:.4g} ps")
    assert traj.time_ps[-1] < t and len(traj.time_ps) < 21
    for field in ("positions", "velocities", "temperature_K", "conserved_eV"):
        assert np.isfinite(getattr(traj, field)).all()


@dataclass(frozen=True)
class Borrowing:
    """A test potential that borrows the config and species of a real ``potential``."""

    potential: Potential

    @property
    def config(self):
        return self.potential.config

    def check_species(self, species):
        self.potential.check_species(species)


@dataclass(frozen=True)
class NaNOutside(Borrowing):
    """A potential whose energy is NaN once an atom leaves a sphere of ``radius`` Å."""

    radius: float

    def energy(self, params, graph):
        outside = jnp.linalg.norm(graph.positions, axis=-1).max() > self.radius
        return self.potential.energy(params, graph) * jnp.where(outside, jnp.nan, 1.0)


@pytest.fixture(scope="module")
def frozen_run(molecule):
    """Replica 0: atoms at rest beyond the cutoff (no forces); replica 1: hydrogens flying
    out of the 5 Å sphere, where the potential turns NaN."""
    potential, params = molecule
    starts = np.stack([4 * WATER, WATER])
    velocities = np.zeros_like(starts)
    velocities[1, 1:] = 0.08 * WATER[1:] / np.linalg.norm(WATER[1:], axis=1, keepdims=True)
    return simulate(NaNOutside(potential, 5.0), params, starts, WATER_SPECIES, velocities=velocities,
                    progress=False, config=MDConfig(dt_fs=0.5, n_steps=400, log_every=20))


def test_a_replica_with_non_finite_energy_is_frozen_while_the_other_runs_on(frozen_run):
    traj = frozen_run
    assert traj.stop_reason[0] is None and np.isnan(traj.unstable_time_ps[0])
    assert traj.stop_reason[1] == f"non-finite energy at {traj.unstable_time_ps[1]:.4g} ps"
    assert 0.02 < traj.unstable_time_ps[1] < 0.1 and traj.time_ps[-1] == pytest.approx(0.2)
    frozen = traj.time_ps >= traj.unstable_time_ps[1]
    last = np.flatnonzero(~frozen)[-1]
    np.testing.assert_array_equal(traj.positions[1, frozen], np.broadcast_to(traj.positions[1, last],
                                                                             (frozen.sum(), 3, 3)))
    assert np.isfinite(traj.positions).all() and np.isfinite(traj.conserved_eV).all()


def test_trajectory_and_thermo_files_hold_the_stable_frames(frozen_run, tmp_path):
    traj = frozen_run
    for r in range(2):
        write_trajectory(traj, tmp_path / f"r{r}.extxyz", replica=r)
        frames = ase.io.read(tmp_path / f"r{r}.extxyz", index=":")
        keep = traj.stable_frames(r)
        assert len(frames) == len(keep) and (len(keep) < len(traj.time_ps)) == (r == 1)
        for k, atoms in zip(keep, frames):
            np.testing.assert_allclose(atoms.positions, traj.positions[r, k], atol=1e-8)
            np.testing.assert_allclose(atoms.get_velocities() * ase.units.fs, traj.velocities[r, k], atol=1e-8)
            assert atoms.get_potential_energy() == pytest.approx(traj.potential_energy_eV[r, k])
            # ASE's units (amu, its time unit, k_B) give our E_kin and T (extxyz keeps ~9 digits)
            assert atoms.get_kinetic_energy() == pytest.approx(traj.kinetic_energy_eV[r, k], rel=1e-6)
            assert atoms.get_temperature() == pytest.approx(traj.temperature_K[r, k], rel=1e-6)
            assert atoms.info["time_ps"] == pytest.approx(traj.time_ps[k])
            np.testing.assert_array_equal(atoms.numbers, WATER_SPECIES)
    write_thermo(traj, tmp_path / "thermo.csv")
    table = np.genfromtxt(tmp_path / "thermo.csv", delimiter=",", names=True)
    assert table.dtype.names == THERMO_COLUMNS
    assert len(table) == len(traj.stable_frames(0)) + len(traj.stable_frames(1))
    rows = table[table["replica"] == 1]
    np.testing.assert_allclose(rows["conserved_eV"], traj.conserved_eV[1, traj.stable_frames(1)], rtol=1e-12)
    with pytest.raises(ValueError, match="replica 2 does not exist"):
        write_trajectory(traj, tmp_path / "x.extxyz", replica=2)


@pytest.mark.parametrize("change, message", [
    (dict(positions=WATER * np.array([1.0, np.nan, 1.0])), "non-finite position"),
    (dict(species=np.array([8, 1, 6])), "atom 2 has species 6, which the model was not trained on"),
    (dict(positions=WATER[:, :2]), "give (n_atoms, 3) for one run"),
    (dict(species=np.array([8, 1])), "give one integer atomic number per atom"),
    (dict(masses=np.array([16.0, -1.0, 1.0])), "positive finite numbers in amu"),
    (dict(velocities=np.zeros((2, 3, 3))), "shaped like the positions, (3, 3), in Å/fs; got shape (2, 3, 3)"),
    (dict(cell=np.eye(3) * 5.0), "less than twice the model's 3.0 Å cutoff"),
    (dict(positions=np.array([[0.0, 0, 0], [0.05, 0, 0], [1.0, 0, 0]])), "closer than 0.1 Å"),
])
def test_bad_input_raises_one_clear_sentence(molecule, change, message):
    potential, params = molecule
    inputs = dict(positions=WATER, species=WATER_SPECIES) | change
    positions, species = inputs.pop("positions"), inputs.pop("species")
    with pytest.raises(ValueError) as err:
        simulate(potential, params, positions, species, progress=False, **inputs)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("settings, message", [
    (dict(ensemble="npt"), "ensemble is 'npt'"),
    (dict(dt_fs=0.0), "dt_fs is 0.0; it must be a positive finite number"),
    (dict(log_every=0), "log_every is 0; it must be a positive integer"),
    (dict(capacity_multiplier=0.5), "capacity_multiplier is 0.5"),
    (dict(max_temperature_K=100.0), "it must exceed temperature_K = 300.0 K"),
])
def test_bad_settings_raise_one_clear_sentence(settings, message):
    with pytest.raises(ValueError) as err:
        MDConfig(**settings)
    assert message in str(err.value)


@pytest.fixture(scope="module")
def md_model_and_data(tmp_path_factory):
    """A saved float32 one-interaction SchNet for H/O and a 6-frame Morse-dimer file."""
    root = tmp_path_factory.mktemp("md")
    data = morse_dimers(root / "morse.extxyz", n_frames=6)
    potential, params = small_potential("float32")
    save_checkpoint(root / "model", potential, params)
    return root / "model", data


def test_md_command_writes_trajectory_thermo_and_stability(md_model_and_data, tmp_path):
    model, data = md_model_and_data
    out = tmp_path / "md"
    assert main(["md", "--model", str(model), "--data", str(data), "--frame", "2", "--ensemble", "nvt-langevin",
                 "--temperature", "300", "--dt", "0.5", "--time", "0.05", "--log-every", "10",
                 "--replicas", "2", "--quiet", "--out", str(out)]) == 0
    frames = ase.io.read(out / "trajectory.extxyz", index=":")
    assert len(frames) == 11 and frames[-1].info["time_ps"] == pytest.approx(0.05)
    assert len(ase.io.read(out / "trajectory_r1.extxyz", index=":")) == 11
    table = np.genfromtxt(out / "thermo.csv", delimiter=",", names=True)
    assert len(table) == 22
    report = json.loads((out / "stability.json").read_text())
    for key in ("stable", "time_to_instability_ps", "hr_mae", "rdf_error",
                "energy_drift_meV_per_atom_per_ps", "steps_per_second"):
        assert key in report
    # this random model breaks bonds (Fu et al.'s criterion) within the run; the report says so
    assert len(report["replicas"]) == 2 and report["hr_mae"] >= 0 and report["n_reallocations"] == 0
    assert report["stable"] == (report["time_to_instability_ps"] is None)


@pytest.mark.parametrize("argv, message", [
    (["--time", "-1"], "--time is -1.0 ps"),
    (["--frame", "9"], "--frame 9 is not a frame of the 6"),
    (["--replicas", "0"], "--replicas is 0"),
    (["--log-every", "0"], "--log-every is 0"),
    (["--temperature", "-5"], "--temperature is -5.0 K"),
    (["--max-temperature", "200"], "--max-temperature is 200.0 K; it must exceed --temperature 300.0 K"),
    (["--restart"], "holds no restart.npz of an earlier run"),
    (["--restart", "--overwrite"], "pass one of them"),
    (["--mass", "heavy"], "--mass 'heavy': 'heavy' is not a positive mass in amu; e.g. --mass 18.015"),
    (["--mass", "1:nan"], "--mass '1:nan': 'nan' is not a positive mass in amu"),
    (["--mass", "1:18,x:3"], "'x:3' is not Z:M with a species Z ≥ 1 and a mass M in amu"),
    (["--mass", "0:18"], "'0:18' is not Z:M"),
    (["--mass", "1:18,1:20"], "gives species 1 twice"),
    (["--mass", "1:1"], "--mass gives species 1 but"),
])
def test_md_command_rejects_bad_settings_in_one_line(md_model_and_data, tmp_path, capsys, argv, message):
    model, data = md_model_and_data
    code = main(["md", "--model", str(model), "--data", str(data), "--quiet", "--out", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and "\n" not in err


@pytest.mark.parametrize("text, masses", [("18.015", 18.015), (" 1:18.015, 2:16.043", {1: 18.015, 2: 16.043})])
def test_the_mass_option_reads_one_mass_or_one_per_species(text, masses):
    assert parse_masses(text) == masses


def test_masses_come_from_the_option_then_the_data_then_the_elements_but_never_for_beads():
    species = np.array([8, 1, 1])
    np.testing.assert_array_equal(resolve_masses(species), ase.data.atomic_masses[[8, 1, 1]])
    np.testing.assert_array_equal(resolve_masses(species, data_masses=np.array([16.0, 2.0, 2.0])), [16, 2, 2])
    np.testing.assert_array_equal(resolve_masses(species, 3.0, data_masses=np.ones(3)), [3, 3, 3])
    np.testing.assert_array_equal(resolve_masses(species, {8: 16.0, 1: 2.0}), [16, 2, 2])
    beads = np.ones(3, np.int32)
    np.testing.assert_array_equal(resolve_masses(beads, data_masses=np.full(3, 18.015), coarse_grained=True), 18.015)
    with pytest.raises(ValueError, match="coarse-grained beads of unknown mass .* pass --mass M"):
        resolve_masses(beads, coarse_grained=True)
    with pytest.raises(ValueError, match="species 200 of the data is not a chemical element.* pass --mass"):
        resolve_masses(np.array([200, 1]))


def cg_beads(path, sidecar=None):
    """Three frames of 8 CG beads (type 0: species 1) near the sites of a 2×2×2 grid in a 7 Å
    periodic box, with ``sidecar`` (a dict) as the .json beside the npz."""
    grid = np.stack(np.meshgrid(*[np.arange(2)] * 3, indexing="ij"), -1).reshape(-1, 3)
    coords = (grid + 0.5) * 3.5 + 0.2 * np.random.default_rng(4).normal(size=(3, 8, 3))
    np.savez(path, types=np.zeros(8, int), coords=coords, box=np.full(3, 7.0))
    if sidecar is not None:
        path.with_suffix(".json").write_text(json.dumps(sidecar))
    return path


def test_md_on_beads_of_unknown_mass_is_refused_in_one_line(md_model_and_data, tmp_path, capsys):
    """Species 1 of CG data is a bead, not hydrogen: no silent 1.008 amu."""
    model, _ = md_model_and_data
    data = cg_beads(tmp_path / "beads.npz")
    assert main(["md", "--model", str(model), "--data", str(data), "--quiet", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "coarse-grained beads of unknown mass" in err and "--mass M" in err and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_md_on_cg_water_uses_the_bead_mass_and_records_it_for_restart(md_model_and_data, tmp_path, capsys):
    """The sidecar names water: 18.015 amu per bead in the trajectory and in stability.json (with
    the first-shell observables); --restart with another --mass is refused, and --mass overrides."""
    model, _ = md_model_and_data
    data = cg_beads(tmp_path / "beads.npz", {"system": "TIP3P water", "n_molecules": 8})
    out = tmp_path / "run"
    argv = ["md", "--model", str(model), "--data", str(data), "--ensemble", "nvt-langevin", "--dt", "2",
            "--time", "0.02", "--log-every", "5", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    report = json.loads((out / "stability.json").read_text())
    assert report["masses_amu"] == {"1": pytest.approx(18.015)} and report["units"]["mass"] == "amu"
    assert set(STRUCTURE_KEYS) <= set(report) and report["reference_structure"] is not None
    frames = ase.io.read(out / "trajectory.extxyz", index=":")
    assert len(frames) == 3 and np.allclose(frames[-1].get_masses(), 18.015)
    assert main(argv[:-2] + ["--out", str(out), "--time", "0.04", "--restart", "--mass", "20"]) == 2
    assert "has masses_amu={'1': 18.015}, not masses_amu={'1': 20.0}" in capsys.readouterr().err
    assert main(argv + ["--mass", "1:20", "--overwrite"]) == 0
    assert json.loads((out / "stability.json").read_text())["masses_amu"] == {"1": 20.0}


@dataclass(frozen=True)
class Springs(Borrowing):
    """Harmonic springs E = Σ_(i<j) ½ k (r_ij − r0)² between atoms within the cutoff of
    ``potential`` (whose config and species it borrows); k in eV/Å², r0 in Å."""

    k: float = 10.0
    r0: float = 1.0

    def energy(self, params, graph):
        _, r = edge_lengths(graph)   # directed edges: every pair twice
        return 0.25 * self.k * jnp.sum(jnp.where(graph.edge_mask, (r - self.r0) ** 2, 0.0))


STRETCHED = np.array([[0.0, 0, 0], [1.3, 0, 0], [0.65, 1.3 * np.sqrt(3) / 2, 0]])  # springs 0.3 Å long


@pytest.fixture(scope="module")
def blow_up(molecule):
    """The stretched springs under velocity Verlet with an 8 fs step, beyond its stability
    limit dt < 2/ω (ω ≈ 0.5/fs for the hydrogens)."""
    potential, params = molecule
    return simulate(Springs(potential), params, STRETCHED, WATER_SPECIES, progress=False,
                    config=MDConfig(dt_fs=8.0, temperature_K=10.0, n_steps=400, log_every=10))


def test_a_cold_nve_run_heated_by_its_potential_energy_is_stable_but_a_blow_up_is_not(molecule, blow_up):
    """Springs 0.3 Å too long hold 1.35 eV: started at 10 K, the molecule heats far above the
    100 K limit while velocity Verlet (dt = 0.25 fs) conserves E_pot + E_kin, so it stays
    stable; Langevin, with nothing conserved, keeps the plain limit; the 8 fs step creates its
    heat and is unstable."""
    potential, params = molecule
    config = MDConfig(dt_fs=0.25, temperature_K=10.0, n_steps=400, log_every=20, friction_per_ps=0.1)
    nve = simulate(Springs(potential), params, STRETCHED, WATER_SPECIES, progress=False, config=config)
    assert nve.stop_reason == [None] and nve.temperature_K.max() > 1000.0
    assert np.ptp(nve.conserved_eV) < 1e-2 * np.ptp(nve.potential_energy_eV)   # O((ω dt)²), ω dt ≈ 0.15
    langevin = simulate(Springs(potential), params, STRETCHED, WATER_SPECIES, progress=False,
                        config=replace(config, ensemble="nvt-langevin"))
    assert langevin.stop_reason[0].startswith("temperature") and "K > 100 K at" in langevin.stop_reason[0]
    reason = blow_up.stop_reason[0]
    assert reason.startswith("non-finite") or "K > 100 K (conserved energy off by" in reason


def test_the_time_of_instability_is_never_later_than_the_simulated_time(blow_up):
    """Every replica fails in one block, which is not logged; the report counts it as simulated."""
    t = blow_up.unstable_time_ps[0]
    assert np.isfinite(t) and blow_up.time_ps[-1] < t
    report = stability_report(blow_up, STRETCHED[None], WATER_SPECIES, molecule=True, ensemble="nve")
    assert report["simulated_time_ps"] == pytest.approx(t)
    assert report["time_to_instability_ps"] <= report["simulated_time_ps"] and not report["stable"]


def test_atoms_collapsing_across_a_periodic_boundary_are_detected(argon):
    """Atom 0 moves 0.5 Å from the periodic image of atom 1 (8 Å away in free space)."""
    *_, atoms = argon
    cell, reference = atoms.cell.array, atoms.positions
    frames = np.stack([reference] * 3)
    frames[1:, 0] = reference[1] + [0.5, 0, 0] - cell[0]
    time_ps = np.array([0.0, 0.1, 0.2])
    assert time_to_collapse(frames, time_ps, reference[None], atoms.numbers, cell=cell) == pytest.approx(0.1)
    assert time_to_collapse(frames, time_ps, reference[None], atoms.numbers) is None
    zeros = np.zeros((1, 3))
    traj = Trajectory(frames[None], np.zeros_like(frames[None]), time_ps, zeros, zeros, zeros, zeros,
                      atoms.numbers, cell, atoms.get_masses(), np.array([np.nan]), [None], 1.0, 0)
    report = stability_report(traj, reference[None], atoms.numbers, cell, molecule=False, ensemble="nve")
    assert report["replicas"][0]["instability"] == "collapse"
    assert report["time_to_instability_ps"] == pytest.approx(0.1)


@pytest.fixture(scope="module")
def md_model64(md_model_and_data, tmp_path_factory):
    """The float64 one-interaction SchNet, saved, and the Morse-dimer file."""
    model = tmp_path_factory.mktemp("md64") / "model"
    save_checkpoint(model, *small_potential("float64"))
    return model, md_model_and_data[1]


def md_args(model, data, out, *extra):
    return ["md", "--model", str(model), "--data", str(data), "--dt", "0.5", "--log-every", "10",
            "--replicas", "2", "--quiet", "--out", str(out), *extra]


RUN = ("trajectory.extxyz", "trajectory_r1.extxyz", "thermo.csv")


@pytest.mark.parametrize("ensemble", ["nve", "nvt-langevin"])
def test_a_run_continued_with_restart_equals_the_uninterrupted_run(md_model64, tmp_path, ensemble):
    """Two blocks in one run, or one block and a --restart to the same time: the same files to the
    byte (thermo.csv holds repr floats) and the same integrator state (Langevin: its PRNG keys)."""
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert main(md_args(*md_model64, whole, "--ensemble", ensemble, "--time", "0.01")) == 0
    assert main(md_args(*md_model64, split, "--ensemble", ensemble, "--time", "0.005")) == 0
    assert main(md_args(*md_model64, split, "--ensemble", ensemble, "--time", "0.01", "--restart")) == 0
    for name in RUN:
        assert (whole / name).read_bytes() == (split / name).read_bytes()
    assert len(np.genfromtxt(split / "thermo.csv", delimiter=",", names=True)) == 2 * 3
    states = [MDState.load(out / "restart.npz")[0] for out in (whole, split)]
    assert states[0].steps_done == states[1].steps_done == 20
    assert len(states[0].integrator) == len(states[1].integrator) >= 4
    for a, b in zip(states[0].integrator, states[1].integrator):
        np.testing.assert_array_equal(a, b)
    report = json.loads((split / "stability.json").read_text())
    assert report["status"] == "finished" and report["simulated_time_ps"] == pytest.approx(0.01)


def test_sigterm_keeps_every_finished_block_and_restart_completes_the_run(md_model64, tmp_path, monkeypatch,
                                                                         capsys):
    """SIGTERM after the first block is written: the run stops there (or a block later), every
    finished block is complete on disk, stability.json has the full report of what was
    simulated with status "interrupted", the old handler is back, and --restart ends with the
    files of a run that was never stopped."""
    out, whole = tmp_path / "run", tmp_path / "whole"
    argv = md_args(*md_model64, out, "--ensemble", "nvt-langevin", "--time", "0.05")
    write = md._RunFiles.write

    def write_and_terminate(self, frame, state):
        write(self, frame, state)
        if state.steps_done == 10:
            os.kill(os.getpid(), signal.SIGTERM)

    handler = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(md._RunFiles, "write", write_and_terminate)
    assert main(argv) == 130
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("jaxrel md: interrupted: stopped at")
    assert str(out) in err and "--restart" in err
    assert signal.getsignal(signal.SIGTERM) is handler
    state, _ = MDState.load(out / "restart.npz")
    n_frames = state.steps_done // 10 + 1
    assert 10 <= state.steps_done <= 20
    assert len(np.genfromtxt(out / "thermo.csv", delimiter=",", names=True)) == 2 * n_frames
    assert len(ase.io.read(out / "trajectory_r1.extxyz", index=":")) == n_frames
    report = json.loads((out / "stability.json").read_text())
    assert report["status"] == "interrupted"
    assert report["simulated_time_ps"] == pytest.approx(state.steps_done * 5e-4)
    assert len(report["replicas"]) == 2 and report["hr_mae"] > 0
    monkeypatch.undo()
    assert main(md_args(*md_model64, out, "--ensemble", "nvt-langevin", "--time", "0.05", "--seed", "1",
                        "--restart")) == 2
    assert "has seed=0, not seed=1" in capsys.readouterr().err
    assert main(argv + ["--restart"]) == 0
    assert main(md_args(*md_model64, whole, "--ensemble", "nvt-langevin", "--time", "0.05")) == 0
    for name in RUN:
        assert (whole / name).read_bytes() == (out / name).read_bytes()
    assert json.loads((out / "stability.json").read_text())["status"] == "finished"


def test_an_earlier_run_is_refused_unchanged_and_overwrite_leaves_no_stale_replica(md_model64, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(md_args(*md_model64, out, "--time", "0.005")) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert "trajectory_r1.extxyz" in before
    one = md_args(*md_model64, out, "--time", "0.005")
    one[one.index("--replicas") + 1] = "1"
    assert main(one) == 2
    assert "already holds an earlier run" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert main(one + ["--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["restart.npz", "stability.json", "thermo.csv",
                                                     "trajectory.extxyz"]
