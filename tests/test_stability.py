"""Stability metrics (Fu et al. 2023, arXiv:2210.07237) on synthetic trajectories with known answers."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
from ase.build import molecule

import jaxrel.stability as stability
from jaxrel.stability import (STRUCTURE_KEYS, bonds_from_reference, distance_distribution, energy_drift,
                              first_shell, hr_mae, rdf, rdf_error, shell_distributions, stability_report,
                              tetrahedral_order, time_to_bond_instability, time_to_collapse)

DT_PS = 0.05


def ethanol_frames(n_frames=30, seed=0, noise=0.01):
    """(n_frames, 9, 3) Å: ethanol with small thermal-like noise, and its species."""
    atoms = molecule("CH3CH2OH")
    rng = np.random.default_rng(seed)
    frames = atoms.positions[None] + noise * rng.normal(size=(n_frames, len(atoms), 3))
    return frames, atoms.numbers


def stretch(frames, species, bond, amount, from_frame):
    """Copy of frames with atom bond[1] moved ``amount`` Å away from bond[0] from ``from_frame`` on."""
    out = frames.copy()
    i, j = bond
    direction = frames[0, j] - frames[0, i]
    out[from_frame:, j] += amount * direction / np.linalg.norm(direction)
    return out


def test_ethanol_has_its_eight_covalent_bonds_with_reference_lengths():
    frames, species = ethanol_frames()
    pairs, lengths = bonds_from_reference(frames, species)
    assert len(pairs) == 8
    elements = sorted("".join(sorted(molecule("CH3CH2OH").get_chemical_symbols()[k] for k in p))
                      for p in pairs)
    assert elements == ["CC", "CH", "CH", "CH", "CH", "CH", "CO", "HO"]
    single_pairs, single_lengths = bonds_from_reference(frames[0], species)
    np.testing.assert_array_equal(single_pairs, pairs)
    np.testing.assert_allclose(lengths, np.linalg.norm(
        frames[:, pairs[:, 1]] - frames[:, pairs[:, 0]], axis=-1).mean(0))
    assert np.abs(single_lengths - lengths).max() < 0.05


@pytest.mark.parametrize("k", [1, 17, 29])
def test_a_bond_stretched_by_0p6_angstrom_is_unstable_from_that_frame(k):
    frames, species = ethanol_frames()
    pairs, lengths = bonds_from_reference(frames, species)
    broken = stretch(frames, species, pairs[3], 0.6, k)
    time_ps = DT_PS * np.arange(len(frames))
    assert time_to_bond_instability(broken, time_ps, pairs, lengths) == pytest.approx(k * DT_PS)


def test_a_bond_stretched_by_0p4_angstrom_stays_stable():
    frames, species = ethanol_frames()
    pairs, lengths = bonds_from_reference(frames, species)
    time_ps = DT_PS * np.arange(len(frames))
    assert time_to_bond_instability(stretch(frames, species, pairs[3], 0.4, 5), time_ps,
                                    pairs, lengths) is None


def test_nan_positions_count_as_bond_instability():
    frames, species = ethanol_frames()
    pairs, lengths = bonds_from_reference(frames, species)
    frames[12:, 0] = np.nan
    assert time_to_bond_instability(frames, DT_PS * np.arange(len(frames)), pairs,
                                    lengths) == pytest.approx(12 * DT_PS)


def test_distance_distribution_is_a_normalised_density_and_its_mae_is_zero_for_identical_sets():
    frames, _ = ethanol_frames()
    h = distance_distribution(frames, r_max=10.0, n_bins=500)
    assert h.shape == (500,)
    assert h.sum() * 10.0 / 500 == pytest.approx(1.0)
    assert hr_mae(frames, frames.copy()) == 0.0
    assert hr_mae(frames, 1.05 * frames) > 0.1


def test_hr_mae_is_two_for_distributions_with_no_distance_in_common():
    short = np.array([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]])
    assert hr_mae(short, 2.0 * short) == pytest.approx(2.0)


def test_hr_mae_is_the_integral_of_the_absolute_difference():
    a = np.array([[[0.0, 0, 0], [1.01, 0, 0]], [[0.0, 0, 0], [2.01, 0, 0]]])
    b = np.array([[[0.0, 0, 0], [1.01, 0, 0]]])
    # h_a puts 1/2 in the 1 Å bin and 1/2 in the 2 Å bin, h_b all in the 1 Å bin: ∫|Δh| = 1.
    assert hr_mae(a, b, r_max=4.0, n_bins=4) == pytest.approx(1.0)


def uniform_gas(cell, n_atoms=60, n_frames=150, seed=1):
    rng = np.random.default_rng(seed)
    return rng.uniform(size=(n_frames, n_atoms, 3)) @ cell


@pytest.mark.parametrize("cell", [np.diag([10.0, 11.0, 12.0]),
                                  np.array([[10.0, 0, 0], [3.0, 10.0, 0], [2.0, -2.5, 11.0]])],
                         ids=["orthorhombic", "triclinic"])
def test_rdf_of_an_ideal_gas_is_one_beyond_short_range(cell):
    positions = uniform_gas(cell)
    species = np.where(np.arange(positions.shape[1]) % 3 == 0, 8, 1)
    r_max = 4.5
    centres = (np.arange(15) + 0.5) * r_max / 15
    for pair in [(8, 8), (1, 1), (8, 1)]:
        g = rdf(positions, cell, species, pair, r_max=r_max, n_bins=15)
        beyond = centres > 2.0
        assert np.abs(g[beyond] - 1).max() < 0.12, pair
        assert abs(g[beyond].mean() - 1) < 0.03, pair


def test_rdf_without_minimum_image_would_fail_the_ideal_gas_check():
    cell = np.diag([10.0, 10.0, 10.0])
    positions = uniform_gas(cell)
    species = np.full(positions.shape[1], 18)
    g_periodic = rdf(positions, cell, species, (18, 18), r_max=5.0, n_bins=10)
    # the same points treated as an isolated cube of gas lose pairs near the faces
    g_cube = rdf(positions, 1e3 * cell, species, (18, 18), r_max=5.0, n_bins=10) * 1e-9
    assert abs(g_periodic[-1] - 1) < 0.05 and g_cube[-1] < 0.7


def test_rdf_error_is_zero_for_identical_and_positive_for_different_structures():
    cell = np.diag([9.0, 9.0, 9.0])
    positions = uniform_gas(cell, n_atoms=30, n_frames=20)
    species = np.where(np.arange(30) % 3 == 0, 8, 1)
    same = rdf_error(positions, positions.copy(), cell, species, r_max=4.0, n_bins=40)
    assert set(same) == {"H-H", "H-O", "O-O"} and all(v == 0.0 for v in same.values())
    other = rdf_error(positions, uniform_gas(cell, n_atoms=30, n_frames=20, seed=7), cell,
                      species, pairs=[(8, 8)], r_max=4.0, n_bins=40)
    assert list(other) == ["O-O"] and other["O-O"] > 0.0


def test_rdf_rejects_r_max_beyond_half_the_cell_and_absent_species():
    cell = np.diag([8.0, 8.0, 8.0])
    positions = uniform_gas(cell, n_atoms=10, n_frames=2)
    species = np.full(10, 18)
    with pytest.raises(ValueError, match="half the smallest cell height"):
        rdf(positions, cell, species, (18, 18), r_max=4.5)
    with pytest.raises(ValueError, match="absent"):
        rdf(positions, cell, species, (18, 36), r_max=3.0)


def test_energy_drift_of_a_linear_ramp_is_its_slope_per_atom_in_mev():
    time_ps = np.linspace(0.0, 20.0, 401)
    conserved = -123.4 + 0.0375 * time_ps  # eV; 0.0375 eV/ps over 25 atoms = 1.5 meV/atom/ps
    assert energy_drift(time_ps, conserved, 25) == pytest.approx(1.5, rel=1e-10)
    wobble = 0.01 * np.sin(2 * np.pi * time_ps)  # a full-period oscillation adds ~no slope
    assert energy_drift(time_ps, conserved + wobble, 25) == pytest.approx(1.5, abs=0.02)
    with pytest.raises(ValueError, match="two frames"):
        energy_drift(time_ps[:1], conserved[:1], 25)


def fake_trajectory(positions, time_ps, unstable_time_ps, conserved=None, cell=None,
                    species=None):
    """A duck-typed jaxrel.md.Trajectory with the fields stability_report reads."""
    n_replicas, n_frames = positions.shape[:2]
    return SimpleNamespace(
        positions=positions, velocities=np.zeros_like(positions), time_ps=time_ps,
        temperature_K=np.full((n_replicas, n_frames), 500.0),
        potential_energy_eV=np.zeros((n_replicas, n_frames)),
        kinetic_energy_eV=np.zeros((n_replicas, n_frames)),
        conserved_eV=np.zeros((n_replicas, n_frames)) if conserved is None else conserved,
        species=species, cell=cell, masses_amu=None,
        unstable_time_ps=np.asarray(unstable_time_ps, dtype=float),
        stop_reason=[None if np.isnan(t) else "temperature above limit" for t in unstable_time_ps],
        steps_per_second=1234.5, n_reallocations=0)


def test_report_takes_the_earliest_of_driver_and_bond_instability_and_is_json():
    frames, species = ethanol_frames(40)
    reference, _ = ethanol_frames(50, seed=3)
    pairs, _ = bonds_from_reference(reference, species)
    time_ps = DT_PS * np.arange(40)
    replicas = np.stack([frames, stretch(frames, species, pairs[0], 0.8, 20),
                         stretch(frames, species, pairs[0], 0.8, 30)])
    conserved = 1.0 + 0.09 * time_ps[None].repeat(3, 0)
    traj = fake_trajectory(replicas, time_ps, [np.nan, 1.5, 0.5], conserved, species=species)
    report = stability_report(traj, reference, species, molecule=True, ensemble="nve")
    assert {"stable", "time_to_instability_ps", "hr_mae", "rdf_error",
            "energy_drift_meV_per_atom_per_ps", "steps_per_second", "replicas"} <= set(report)
    json.dumps(report, allow_nan=False)
    assert report["stable"] is False and report["time_to_instability_ps"] == pytest.approx(0.5)
    first, second, third = report["replicas"]
    assert first["time_to_instability_ps"] is None and first["n_frames_used"] == 40
    assert second["instability"] == "bond" and second["time_to_instability_ps"] == pytest.approx(1.0)
    assert second["n_frames_used"] == 20
    assert third["instability"] == "driver" and third["n_frames_used"] == 10
    assert first["hr_mae"] > 0 and report["rdf_error"] is None
    assert report["energy_drift_meV_per_atom_per_ps"] == pytest.approx(10.0)
    assert report["steps_per_second"] == 1234.5


def test_report_for_a_periodic_system_gives_rdf_errors_and_no_drift_under_nvt():
    cell = np.diag([9.0, 9.0, 9.0])
    species = np.where(np.arange(30) % 3 == 0, 8, 1)
    positions = uniform_gas(cell, 30, 20, seed=5)[None].copy()
    positions[0, 15:] = np.nan
    traj = fake_trajectory(positions, DT_PS * np.arange(20), [np.nan], cell=cell, species=species)
    report = stability_report(traj, uniform_gas(cell, 30, 20, seed=5), species, cell,
                              molecule=False, ensemble="nvt-langevin")
    json.dumps(report, allow_nan=False)
    (replica,) = report["replicas"]
    assert replica["instability"] == "non-finite positions" and replica["n_frames_used"] == 15
    assert set(replica["rdf_error"]) == {"H-H", "H-O", "O-O"}
    assert report["rdf_error"] == pytest.approx(np.mean(list(replica["rdf_error"].values())))
    assert report["hr_mae"] is None and report["energy_drift_meV_per_atom_per_ps"] is None
    # two species: no first-shell observables
    assert report["reference_structure"] is None
    assert all(report[k] is None and replica[k] is None for k in STRUCTURE_KEYS)


def test_report_rejects_empty_trajectories_mismatched_atoms_and_unknown_ensembles():
    frames, species = ethanol_frames(5)
    empty = fake_trajectory(np.zeros((1, 0, 9, 3)), np.zeros(0), [np.nan])
    with pytest.raises(ValueError, match="non-empty"):
        stability_report(empty, frames, species, molecule=True, ensemble="nve")
    traj = fake_trajectory(frames[None], DT_PS * np.arange(5), [np.nan])
    with pytest.raises(ValueError, match="reference_positions hold 8 atoms"):
        stability_report(traj, frames[:, :8], species, molecule=True, ensemble="nve")
    with pytest.raises(ValueError, match="species has shape"):
        stability_report(traj, frames, species[:3], molecule=True, ensemble="nve")
    with pytest.raises(ValueError, match="ensemble"):
        stability_report(traj, frames, species, molecule=True, ensemble="npt")
    with pytest.raises(ValueError, match="time_ps has shape"):
        stability_report(fake_trajectory(frames[None], np.arange(3.0), [np.nan]), frames,
                         species, molecule=True, ensemble="nve")


def test_two_hydrogens_falling_onto_each_other_collapse_while_every_bond_holds():
    """PaiNN's ethanol failure: two H of one carbon at 0.5 Å, each C–H bond within 0.5 Å."""
    frames, species = ethanol_frames()
    pairs, lengths = bonds_from_reference(frames, species)
    time_ps = DT_PS * np.arange(len(frames))
    carbon = next(int(a) for a in range(len(species)) if species[a] == 6 and
                  sum(species[b] == 1 for p in pairs if a in p for b in p if b != a) == 3)
    h1, h2 = [int(b) for p in pairs if carbon in p for b in p if b != carbon and species[b] == 1][:2]
    collapsed = frames.copy()
    midpoint = 0.5 * (frames[:, h1] + frames[:, h2])
    for h in (h1, h2):
        collapsed[12:, h] = midpoint[12:] + 0.25 * (frames[12:, h] - midpoint[12:]) / np.linalg.norm(
            frames[12:, h] - midpoint[12:], axis=-1, keepdims=True)
    assert time_to_bond_instability(collapsed, time_ps, pairs, lengths) is None
    assert time_to_collapse(collapsed, time_ps, frames, species) == pytest.approx(12 * DT_PS)
    assert time_to_collapse(frames, time_ps, frames, species) is None


def test_q_of_a_perfect_tetrahedron_is_one_also_across_the_periodic_boundary():
    """Errington & Debenedetti's q: cos ψ = −1/3 for all six pairs gives q = 1. The centre
    sits at a corner of the box, so three of its neighbours are periodic images; squeezing one
    vertex towards another lowers q."""
    vertices = np.array([[1.0, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) / np.sqrt(3.0)
    cell = 20.0 * np.eye(3)
    atoms = np.concatenate([[[0.1, 0.2, 0.3]], [0.1, 0.2, 0.3] + 1.5 * vertices]) % 20.0
    q = tetrahedral_order(atoms[None], cell)
    assert q.shape == (1, 5) and q[0, 0] == pytest.approx(1.0, abs=1e-12)
    assert tetrahedral_order(atoms[None])[0, 0] < 0.5   # without the cell the neighbours are wrong
    bent = atoms.copy()
    bent[1] = (atoms[1] + atoms[2]) / 2 + 0.3 * vertices[0]
    assert tetrahedral_order(bent[None] % 20.0, cell)[0, 0] < 0.9


def test_mean_q_of_an_ideal_gas_is_zero():
    """Uncorrelated neighbour directions give ⟨(cos ψ + 1/3)²⟩ = 1/3 + 1/9, so ⟨q⟩ = 0; the
    per-atom spread is ≈ 0.5, so the mean of 1200 values is within 0.06 (≈ 4σ)."""
    cell = np.diag([12.0, 13.0, 14.0])
    q = tetrahedral_order(uniform_gas(cell, n_atoms=300, n_frames=4, seed=2), cell)
    assert abs(q.mean()) < 0.06 and q.max() <= 1.0 + 1e-12 and q.min() >= -3.0
    shells = shell_distributions(uniform_gas(cell, n_atoms=300, n_frames=4, seed=2), cell, None)
    assert shells.angle is None and shells.mean_q == pytest.approx(q.mean(), abs=1e-12)
    assert shells.q.sum() * 4.0 / len(shells.q) == pytest.approx(1.0)


def cubic_lattice(n=4, a=3.0):
    """(n³, 3) sites of a simple cubic lattice filling a periodic cube of side n·a, and its cell."""
    grid = np.stack(np.meshgrid(*[np.arange(n)] * 3, indexing="ij"), -1).reshape(-1, 3)
    return (grid + 0.5) * a, n * a * np.eye(3)


def test_first_shell_angles_of_a_simple_cubic_lattice_are_90_and_180_degrees_only():
    """Six neighbours at a (within 3.5 Å < √2 a): of their 15 pairs 12 meet at 90° and 3 at 180°."""
    sites, cell = cubic_lattice()
    angle = shell_distributions(sites[None], cell, 3.5).angle
    mass = angle * 180.0 / len(angle)                    # probability per 2° bin
    assert mass[44] + mass[45] == pytest.approx(0.8)     # bins [88°, 90°) and [90°, 92°)
    assert mass[-1] == pytest.approx(0.2)                # [178°, 180°]
    assert mass.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="half the smallest cell"):
        shell_distributions(sites[None], cell, 6.5)


def test_first_shell_finds_the_peak_and_the_trough_of_a_model_rdf():
    r = (np.arange(500) + 0.5) * 6.0 / 500
    g = np.where(r > 2.0, 1 + 1.5 * np.exp(-(r - 3.0) ** 2 / 0.08) - 0.4 * np.exp(-(r - 4.2) ** 2 / 0.2), 0.0)
    shell = first_shell(r, g)
    assert shell.peak_position == pytest.approx(3.0, abs=0.013)
    assert shell.peak_height == pytest.approx(2.5, rel=0.01)
    assert shell.minimum_position == pytest.approx(4.2, abs=0.02)
    assert first_shell(r, np.ones(500)) == (None, None, None)          # ideal gas: no shell
    falling = first_shell(r[:300], g[:300])                              # r_max = 3.6 Å, before the trough
    assert falling.peak_position == pytest.approx(3.0, abs=0.013) and falling.minimum_position is None


def noisy_lattice(noise, seed, n_frames=4):
    sites, cell = cubic_lattice(5)
    rng = np.random.default_rng(seed)
    return sites + noise * rng.normal(size=(n_frames, len(sites), 3)), cell


def test_report_of_a_trajectory_equal_to_the_reference_has_zero_structure_errors(monkeypatch):
    """A thermal simple-cubic solid of one species (125 atoms, 15 Å box): its own frames give
    zero RDF, angle and q errors and the reference's peak; other frames give positive errors.
    With a budget of two frames' distances the report reads two reference frames."""
    reference, cell = noisy_lattice(0.25, seed=0)
    species = np.full(125, 18)

    def report(frames):
        traj = fake_trajectory(frames[None], DT_PS * np.arange(len(frames)), [np.nan], cell=cell,
                               species=species)
        return stability_report(traj, reference, species, cell, molecule=False, ensemble="nvt-langevin")

    same = report(reference.copy())
    json.dumps(same, allow_nan=False)
    ref = same["reference_structure"]
    assert ref["rdf_peak_position_A"] == pytest.approx(3.0, abs=0.15) and ref["rdf_peak_height"] > 1.5
    assert 3.1 < ref["first_shell_radius_A"] < 4.2 and same["n_reference_frames"] == 4   # a < r < √2 a
    assert same["rdf_error"] == same["angle_distribution_error"] == same["q_distribution_error"] == 0.0
    assert same["rdf_peak_position_A"] == ref["rdf_peak_position_A"]
    assert same["rdf_peak_height"] == ref["rdf_peak_height"] and same["mean_q"] == ref["mean_q"]
    assert same["replicas"][0]["q_distribution_error"] == 0.0
    other = report(noisy_lattice(0.3, seed=1)[0])
    assert other["replicas"][0]["instability"] is None
    assert other["angle_distribution_error"] > 0.05 and other["q_distribution_error"] > 0.05
    assert other["rdf_peak_height"] < ref["rdf_peak_height"]
    monkeypatch.setattr(stability, "REPORT_DISTANCES", 2 * 125 * 124 // 2)
    two = report(reference.copy())
    assert two["n_reference_frames"] == 2 and two["angle_distribution_error"] == 0.0
