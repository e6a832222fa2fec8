"""Tests of the GFN2-xTB data set of G2 molecules (jaxrel.data.xtb) and of reading it
(jaxrel.data.read_molecules, the ``xtb`` npz format), in float64."""

import numpy as np
import pytest
from ase import Atoms
from tblite.ase import TBLite
from tblite.exceptions import TBLiteRuntimeError
from threadpoolctl import threadpool_limits

from jaxrel.cli import main
from jaxrel.data import Frames, generate_xtb, read_frames, read_molecules, save_xtb
from jaxrel.data import xtb
from jaxrel.data.readers import KCAL_PER_MOL_IN_EV

NAMES = ["H2O", "CH4", "NH3", "LiF", "SiH4"]
N_FRAMES = 3
LABELS = ("coords", "energies", "forces", "gaps", "charges", "dipoles")


@pytest.fixture(scope="module")
def data():
    return generate_xtb(NAMES, frames_per_molecule=N_FRAMES, seed=0, progress=False)


def block(data, name):
    """(rows, real atoms) of molecule ``name`` in a generate_xtb result."""
    rows = np.flatnonzero(data.molecules == name)
    return rows, data.species[rows[0]] > 0


def test_frames_are_padded_and_contiguous_per_molecule(data):
    assert data.species.shape == (len(NAMES) * N_FRAMES, 5) and data.species.dtype == np.int32
    assert data.molecules.tolist() == [name for name in NAMES for _ in range(N_FRAMES)]
    rows, atoms = block(data, "H2O")
    assert data.species[rows[0]].tolist() == [8, 1, 1, 0, 0]
    assert not data.coords[rows][:, ~atoms].any() and not data.forces[rows][:, ~atoms].any()
    assert data.elements == ("H", "Li", "C", "N", "O", "F", "Si") and data.n_skipped == 0


def test_generation_is_bit_identical_for_one_seed_and_differs_for_another(data):
    again = generate_xtb(NAMES, frames_per_molecule=N_FRAMES, seed=0, progress=False)
    for key in ("species", "molecules", *LABELS):
        assert np.array_equal(getattr(again, key), getattr(data, key)), key
    other = generate_xtb(["H2O"], frames_per_molecule=N_FRAMES, seed=1, progress=False)
    rows, atoms = block(data, "H2O")
    assert not np.array_equal(other.coords, data.coords[rows][:, atoms])


def test_a_molecule_frames_do_not_depend_on_the_other_molecules_listed(data):
    alone = generate_xtb(["LiF", "H2O"], frames_per_molecule=N_FRAMES, seed=0, progress=False)
    for name in ("H2O", "LiF"):
        rows, atoms = block(data, name)
        rows_alone, atoms_alone = block(alone, name)
        for key in LABELS:
            mine, theirs = getattr(data, key)[rows], getattr(alone, key)[rows_alone]
            if mine.ndim > 1 and key != "dipoles":
                mine, theirs = mine[:, atoms], theirs[:, atoms_alone]
            assert np.array_equal(mine, theirs), (name, key)


def test_displacements_have_the_thermal_spread(data):
    from ase.collections import g2
    from ase.units import kB

    displacement = np.concatenate([(data.coords[rows][:, atoms] - g2[name].positions).ravel()
                                   for name in NAMES for rows, atoms in [block(data, name)]])
    sigma = np.sqrt(kB * 300.0 / xtb.FORCE_CONSTANT)
    # 135 draws of N(0, σ²): the sample σ is within 20 % of σ with probability > 0.99
    assert displacement.std() == pytest.approx(sigma, rel=0.2)


def test_labels_equal_those_of_tblite_ase_calculator(data):
    for k in range(len(data.energies)):
        atoms = data.species[k] > 0
        molecule = Atoms(numbers=data.species[k][atoms], positions=data.coords[k][atoms])
        molecule.calc = TBLite(method="GFN2-xTB", verbosity=0)
        with threadpool_limits(limits=1, user_api="openmp"):  # as fast as generate_xtb
            energy = molecule.get_potential_energy()
        assert data.energies[k] == pytest.approx(energy, abs=1e-8)
        np.testing.assert_allclose(data.forces[k][atoms], molecule.get_forces(), atol=1e-8)
        np.testing.assert_allclose(data.charges[k][atoms], molecule.get_charges(), atol=1e-8)
        np.testing.assert_allclose(data.dipoles[k], molecule.get_dipole_moment(), atol=1e-8)


def test_forces_are_minus_the_central_difference_of_the_energy(data):
    rows, atoms = block(data, "NH3")
    numbers, positions = data.species[rows[0]][atoms], data.coords[rows[0]][atoms]
    h = 1e-3  # Å; the truncation error, ~h², is 4e-5 eV/Å here, as is the SCF noise
    difference = np.zeros_like(positions)
    with threadpool_limits(limits=1, user_api="openmp"):
        for i, d in np.ndindex(positions.shape):
            step = np.zeros_like(positions)
            step[i, d] = h
            difference[i, d] = (xtb._gfn2(numbers, positions + step).energy
                                - xtb._gfn2(numbers, positions - step).energy) / (2 * h)
    np.testing.assert_allclose(data.forces[rows[0]][atoms], -difference, atol=2e-4)


def test_charges_sum_to_zero_and_gaps_are_positive(data):
    np.testing.assert_allclose(data.charges.sum(axis=1), 0.0, atol=1e-8)
    assert (data.gaps > 0).all()


def test_a_failed_scf_is_redrawn_from_the_stream_and_counted(monkeypatch):
    plain = generate_xtb(["H2O"], frames_per_molecule=3, seed=0, progress=False)
    label, calls = xtb._gfn2, []

    def first_fails(numbers, positions):
        calls.append(1)
        if len(calls) == 1:
            raise TBLiteRuntimeError("SCF not converged in 250 cycles")
        return label(numbers, positions)

    monkeypatch.setattr(xtb, "_gfn2", first_fails)
    redrawn = generate_xtb(["H2O"], frames_per_molecule=2, seed=0, progress=False)
    assert redrawn.n_scf_failures == 1 and plain.n_scf_failures == 0
    assert np.array_equal(redrawn.coords, plain.coords[1:])


def test_draws_rejected_in_a_row_ask_for_a_lower_temperature(monkeypatch):
    monkeypatch.setattr(xtb, "MIN_DISTANCE", 100.0)
    with pytest.raises(ValueError, match=r"H2O: 100 draws in a row at 300.0 K .*lower the temperature"):
        generate_xtb(["H2O"], frames_per_molecule=1, progress=False)


@pytest.mark.parametrize("molecules, message", [
    (["H2O", "Unobtainium"], r"unknown G2 molecule\(s\) 'Unobtainium'; use names of ase.collections"),
    (["CH3"], r"'CH3' are open-shell .*drop them, or pass 'g2'"),
    (["H2O", "H2O"], r"lists 'H2O' more than once"),
    ("H2O", r"molecules 'H2O' is neither 'g2' nor a list of G2 names; pass 'g2' or a list such as \['H2O'\]"),
    ([], r"molecules is an empty list"),
])
def test_bad_molecules_raise_naming_the_fix(molecules, message):
    with pytest.raises(ValueError, match=message):
        generate_xtb(molecules, frames_per_molecule=1, progress=False)


def test_g2_leaves_out_the_open_shell_molecules():
    from ase.collections import g2

    names, n_skipped = xtb._molecule_names("g2")
    assert len(names) == 119 and n_skipped == 43
    assert all(g2[name].get_initial_magnetic_moments().sum() == 0 for name in names)
    assert "CH3" in g2.names and "CH3" not in names


def test_save_then_read_molecules_gives_every_molecule_without_padding(data, tmp_path):
    path = tmp_path / "g2.npz"
    save_xtb(data, path)
    molecules = read_molecules(path)
    assert [m.name for m in molecules] == NAMES
    for frames in molecules:
        rows, atoms = block(data, frames.name)
        assert len(frames) == N_FRAMES and 0 not in frames.species
        assert np.array_equal(frames.species, data.species[rows[0]][atoms])
        assert np.array_equal(frames.positions, data.coords[rows][:, atoms])
        assert np.array_equal(frames.forces, data.forces[rows][:, atoms])
        assert np.array_equal(frames.charges, data.charges[rows][:, atoms])
        for field, key in (("energies", "energies"), ("gaps", "gaps"), ("dipoles", "dipoles")):
            assert np.array_equal(getattr(frames, field), getattr(data, key)[rows])
    assert np.array_equal(np.concatenate([m.energies for m in molecules]), data.energies)
    with np.load(path) as stored:
        assert str(stored["xtb_method"]) == "GFN2-xTB" and "eV/Å" in str(stored["units"])
    with pytest.raises(ValueError, match=r"holds 5 molecules, not frames of one system; pick one with "
                                         r"--molecule NAME .* pass the file to 'jaxrel train'"):
        read_frames(path)
    picked = read_frames(path, molecule=molecules[2].name)
    assert picked.name == molecules[2].name and np.array_equal(picked.positions, molecules[2].positions)
    with pytest.raises(ValueError, match=r"--molecule C60 is not a molecule of .* \(molecules: "):
        read_frames(path, molecule="C60")


def test_read_frames_reads_an_xtb_file_of_one_molecule(data, tmp_path):
    one = generate_xtb(["NH3"], frames_per_molecule=2, progress=False)
    save_xtb(one, tmp_path / "nh3.npz")
    frames = read_frames(tmp_path / "nh3.npz")
    assert frames.name == "NH3" and frames.species.tolist() == [7, 1, 1, 1]
    assert np.array_equal(frames.gaps, one.gaps) and np.array_equal(frames.dipoles, one.dipoles)
    picked = frames.select([1])
    assert np.array_equal(picked.charges, one.charges[[1]]) and picked.name == "NH3"


def test_read_molecules_of_another_format_gives_one_frames(tmp_path):
    path = tmp_path / "rmd17.npz"
    rng = np.random.default_rng(0)
    np.savez(path, nuclear_charges=np.array([8, 1, 1]), coords=np.array([[0.0, 0, 0], [0.96, 0, 0],
                                                                        [-0.24, 0.93, 0]]) + rng.normal(0, 0.01, (2, 3, 3)),
             energies=np.array([-1.0, -2.0]), forces=np.zeros((2, 3, 3)))
    [frames] = read_molecules(path)
    assert len(frames) == 2 and frames.name is None and frames.gaps is None
    np.testing.assert_allclose(frames.energies, [-KCAL_PER_MOL_IN_EV, -2 * KCAL_PER_MOL_IN_EV])


def test_cli_writes_the_file_and_refuses_to_overwrite_it(tmp_path, capsys):
    out = tmp_path / "small.npz"
    argv = ["generate", "xtb", "--molecules", "H2O, LiF", "--frames-per-molecule", "2", "--quiet",
            "--out", str(out)]
    assert main(argv) == 0
    summary = capsys.readouterr().out
    assert '"n_molecules": 2' in summary and '"n_frames": 4' in summary
    assert [m.name for m in read_molecules(out)] == ["H2O", "LiF"]
    assert main(argv) == 2
    assert "already exists; choose a new name, or pass --overwrite" in capsys.readouterr().err
    assert main(argv + ["--overwrite"]) == 0


@pytest.mark.parametrize("labels, message", [
    (dict(gaps=np.ones(3)), r"gaps have shape \(3,\) but positions \(2, 3, 3\) need \(2,\)"),
    (dict(gaps=[1.0, np.nan]), r"frame 1 has a non-finite HOMO–LUMO gap nan eV"),
    (dict(dipoles=np.ones((2, 2))), r"dipoles have shape \(2, 2\) but positions .* need \(2, 3\)"),
    (dict(dipoles=[[0.0, 0, 0], [0, np.inf, 0]]), r"frame 1 has a non-finite dipole \[0.0, inf, 0.0\] e·Å"),
    (dict(charges=np.zeros((2, 4))), r"charges have shape \(2, 4\) but positions .* need \(2, 3\)"),
    (dict(charges=[[0.0, 0, 0], [0, 0, np.nan]]), r"frame 1, atom 2 has a non-finite charge nan e"),
])
def test_frames_rejects_wrong_shaped_or_non_finite_labels(labels, message):
    positions = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]]) + np.zeros((2, 1, 1))
    with pytest.raises(ValueError, match=message):
        Frames(np.array([8, 1, 1]), positions, None, None, None, source="m.npz", **labels)
