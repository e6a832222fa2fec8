"""Readers, splits and species-energy fits of jaxrel.data."""

from pathlib import Path

import ase
import ase.io
import ase.units
import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator

from jaxrel.data.dataset import Dataset, fit_species_energies, split_frames
from jaxrel.data.readers import KCAL_PER_MOL_IN_EV, Frames, read_frames


def shared_file(data_dir: Path, relative: str) -> Path:
    path = data_dir / relative
    if not path.is_file():
        pytest.skip(f"{path} not found; set JAXREL_DATA to the folder holding the jaxrel "
                    "shared data (rmd17/, water_dft/, cg_water/)")
    return path


def frames_of(species, energies, seed=0) -> Frames:
    """Synthetic free-space frames with the given species and per-frame energies (eV)."""
    rng = np.random.default_rng(seed)
    n_frames, n_atoms = len(energies), len(species)
    return Frames(species=np.asarray(species), positions=rng.normal(size=(n_frames, n_atoms, 3)),
                  energies=np.asarray(energies, dtype=np.float64), forces=None, cell=None,
                  source=f"synthetic {species}")


def test_kcal_per_mol_equals_codata_2018_value():
    units = ase.units.create_units("2018")
    assert KCAL_PER_MOL_IN_EV == pytest.approx(units["kcal"] / units["mol"], rel=1e-14)
    assert KCAL_PER_MOL_IN_EV == pytest.approx(0.0433641042, abs=1e-10)


def test_rmd17_ethanol_is_converted_from_kcal_per_mol_to_ev(data_dir):
    path = shared_file(data_dir, "rmd17/rmd17_ethanol_train_01.npz")
    raw = np.load(path)
    frames = read_frames(path)
    assert len(frames) == 1000
    assert frames.species.dtype == np.int32
    np.testing.assert_array_equal(frames.species, [6, 6, 8, 1, 1, 1, 1, 1, 1])
    assert frames.energies[0] == raw["energies"][0] * KCAL_PER_MOL_IN_EV
    assert frames.energies[0] == pytest.approx(-4209.784, abs=1e-3)  # -97079.922 kcal/mol
    np.testing.assert_array_equal(frames.forces, raw["forces"] * KCAL_PER_MOL_IN_EV)
    np.testing.assert_array_equal(frames.positions, raw["coords"])
    assert frames.cell is None
    assert not np.allclose(frames.energies, raw["old_energies"] * KCAL_PER_MOL_IN_EV)


def test_water_dft_has_192_atoms_in_a_shared_12_445_angstrom_cell(data_dir):
    path = shared_file(data_dir, "water_dft/water64_dft.npz")
    raw = np.load(path)
    frames = read_frames(path)
    assert frames.positions.shape == (400, 192, 3)
    assert frames.positions.dtype == np.float64
    assert sorted(np.bincount(frames.species)[[1, 8]]) == [64, 128]
    assert frames.cell.shape == (3, 3)
    np.testing.assert_allclose(frames.cell, 12.445 * np.eye(3), atol=1e-3)
    np.testing.assert_array_equal(frames.energies, raw["energies"])
    np.testing.assert_array_equal(frames.forces, raw["forces"])


def test_cg_water_has_no_energies_species_one_and_forces_in_ev(data_dir):
    path = shared_file(data_dir, "cg_water/cg_water_tip3p_300K.npz")
    raw = np.load(path)
    frames = read_frames(path)
    assert frames.energies is None
    np.testing.assert_array_equal(frames.species, np.ones(258))
    np.testing.assert_array_equal(frames.forces, raw["forces"].astype(np.float64)
                                  * KCAL_PER_MOL_IN_EV)
    np.testing.assert_array_equal(frames.cell, np.diag(raw["box"]).astype(np.float64))


def test_cg_methane_reference_frame_reads_as_one_frame_with_its_cell(data_dir):
    path = shared_file(data_dir, "cg_methane_frame/bonneau_cg_methane_frame0.npz")
    raw = np.load(path)
    frames = read_frames(path)
    assert frames.positions.shape == (1, 125, 3)
    assert frames.forces is None and frames.energies is None
    np.testing.assert_array_equal(frames.species, raw["types"] + 1)
    np.testing.assert_array_equal(frames.cell, raw["cell"])


@pytest.mark.parametrize("periodic", [False, True])
def test_extxyz_round_trip_is_exact(tmp_path, periodic):
    rng = np.random.default_rng(1)
    cell = np.diag([10.0, 11.5, 12.25]) if periodic else None
    written = []
    for _ in range(3):
        # Multiples of 1/64 are exact in binary and in the 8 decimals extxyz writes.
        atoms = ase.Atoms("OH2", positions=rng.integers(-320, 320, (3, 3)) / 64,
                          cell=cell, pbc=periodic)
        atoms.calc = SinglePointCalculator(atoms, energy=rng.integers(-9000, 0) / 64,
                                           forces=rng.integers(-64, 64, (3, 3)) / 64)
        written.append(atoms)
    path = tmp_path / "water.extxyz"
    ase.io.write(path, written, format="extxyz")
    frames = read_frames(path)
    np.testing.assert_array_equal(frames.species, [8, 1, 1])
    np.testing.assert_array_equal(frames.positions, [a.positions for a in written])
    np.testing.assert_array_equal(frames.energies, [a.get_potential_energy() for a in written])
    np.testing.assert_array_equal(frames.forces, [a.get_forces() for a in written])
    if periodic:
        np.testing.assert_array_equal(frames.cell, cell)
    else:
        assert frames.cell is None


def test_extxyz_without_calculator_has_no_energies(tmp_path):
    path = tmp_path / "bare.xyz"
    ase.io.write(path, [ase.Atoms("Ar2", positions=[[0, 0, 0], [0, 0, 3.5]])] * 2)
    frames = read_frames(path)
    assert frames.energies is None and frames.forces is None and len(frames) == 2


def test_extxyz_with_differing_species_names_the_frame(tmp_path):
    path = tmp_path / "mixed.extxyz"
    ase.io.write(path, [ase.Atoms("OH2", positions=np.eye(3)),
                        ase.Atoms("OH2", positions=np.eye(3)),
                        ase.Atoms("SH2", positions=np.eye(3))])
    with pytest.raises(ValueError, match="frame 2 has species"):
        read_frames(path)


def write_noble_gas(path, n_frames=4, n_atoms=5, **overrides):
    rng = np.random.default_rng(2)
    arrays = dict(species=np.full(n_atoms, 18), coords=rng.uniform(0, 10, (n_frames, n_atoms, 3)),
                  energies=rng.normal(size=n_frames),
                  forces=rng.normal(size=(n_frames, n_atoms, 3)),
                  cell=10.0 * np.eye(3), temperature=np.array(90.0))
    arrays.update(overrides)
    np.savez(path, **arrays)
    return arrays


def test_noble_gas_npz_is_read_unchanged(tmp_path):
    path = tmp_path / "argon.npz"
    arrays = write_noble_gas(path)
    frames = read_frames(path)
    assert "noble_gas" in frames.source
    np.testing.assert_array_equal(frames.species, arrays["species"])
    np.testing.assert_array_equal(frames.positions, arrays["coords"])
    np.testing.assert_array_equal(frames.energies, arrays["energies"])
    np.testing.assert_array_equal(frames.forces, arrays["forces"])
    np.testing.assert_array_equal(frames.cell, arrays["cell"])


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.npz does not exist"):
        read_frames(tmp_path / "nowhere.npz")


@pytest.mark.parametrize("name", ["empty.npz", "empty.extxyz"])
def test_empty_file_raises(tmp_path, name):
    (tmp_path / name).touch()
    with pytest.raises(ValueError, match=f"{name} is empty"):
        read_frames(tmp_path / name)


def test_npz_with_unknown_keys_lists_keys_and_formats(tmp_path):
    path = tmp_path / "odd.npz"
    np.savez(path, xyz=np.zeros((2, 3, 3)), charges=np.ones(3))
    with pytest.raises(ValueError, match="keys charges, xyz, which match no known npz layout "
                                         r"\(rmd17: .*water_dft: .*cg: .*noble_gas: "):
        read_frames(path)


def test_npz_with_zero_frames_raises(tmp_path):
    path = tmp_path / "none.npz"
    np.savez(path, nuclear_charges=np.array([1, 1]), coords=np.zeros((0, 2, 3)),
             energies=np.zeros(0), forces=np.zeros((0, 2, 3)))
    with pytest.raises(ValueError, match="none.npz holds no frames"):
        read_frames(path)
    np.savez(tmp_path / "blank.npz")
    with pytest.raises(ValueError, match="blank.npz holds no frames"):
        read_frames(tmp_path / "blank.npz")


def test_npz_missing_a_required_key_names_it(tmp_path):
    path = tmp_path / "rmd.npz"
    np.savez(path, nuclear_charges=np.array([1, 1]), coords=np.zeros((1, 2, 3)),
             energies=np.zeros(1))
    with pytest.raises(ValueError, match="lacks the key 'forces'"):
        read_frames(path)


@pytest.mark.parametrize("key, shape", [("forces", (4, 6, 3)), ("energies", (3,)),
                                        ("species", (4,))])
def test_shape_mismatch_raises(tmp_path, key, shape):
    path = tmp_path / "bad.npz"
    write_noble_gas(path, **{key: np.ones(shape)})
    with pytest.raises(ValueError, match=f"bad.npz.*{key} have shape"):
        read_frames(path)


def test_non_finite_position_names_frame_and_atom(tmp_path):
    coords = np.random.default_rng(3).uniform(0, 10, (4, 5, 3))
    coords[2, 3, 1] = np.nan
    path = tmp_path / "nan.npz"
    write_noble_gas(path, coords=coords)
    with pytest.raises(ValueError, match="nan.npz.*frame 2, atom 3 has a non-finite position"):
        read_frames(path)


def test_select_slices_per_frame_arrays_and_keeps_shared_ones():
    frames = frames_of([1, 8, 1], np.arange(5.0))
    periodic = Frames(frames.species, frames.positions, frames.energies, frames.positions,
                      cell=np.arange(5)[:, None, None] * np.eye(3), source="per-frame cells")
    for index in (slice(1, 3), np.array([1, 2]), np.array([False, True, True, False, False])):
        picked = periodic.select(index)
        np.testing.assert_array_equal(picked.energies, [1.0, 2.0])
        np.testing.assert_array_equal(picked.positions, frames.positions[1:3])
        np.testing.assert_array_equal(picked.forces, frames.positions[1:3])
        np.testing.assert_array_equal(picked.cell, [np.eye(3), 2 * np.eye(3)])
        np.testing.assert_array_equal(picked.species, frames.species)
    assert len(frames.select(4)) == 1 and frames.select(4).energies[0] == 4.0


def test_split_is_deterministic_disjoint_and_covers_all_frames():
    split = split_frames(100, 60, 15, seed=7)
    assert (len(split.train), len(split.validation), len(split.test)) == (60, 15, 25)
    joined = np.concatenate([split.train, split.validation, split.test])
    np.testing.assert_array_equal(np.sort(joined), np.arange(100))
    again = split_frames(100, 60, 15, seed=7)
    for name in ("train", "validation", "test"):
        np.testing.assert_array_equal(getattr(split, name), getattr(again, name))
    assert not np.array_equal(split.train, split_frames(100, 60, 15, seed=8).train)
    small = split_frames(100, 10, 5, n_test=20, seed=7)
    assert len(np.unique(np.concatenate([small.train, small.validation, small.test]))) == 35


@pytest.mark.parametrize("sizes, message", [((80, 15, 10), "exceeds the 100 frames"),
                                            ((-1, 10, None), "n_train = -1 is negative"),
                                            ((101, 0, None), "exceeds the 100 frames")])
def test_split_rejects_bad_sizes(sizes, message):
    with pytest.raises(ValueError, match=message):
        split_frames(100, *sizes)


def test_species_energy_fit_recovers_known_shifts_over_compositions():
    shifts = {1: -13.625, 6: -1029.5, 8: -2041.25}
    compositions = [[8, 1, 1], [6, 1, 1, 1, 1], [8, 6, 8]]  # H2O, CH4, CO2: full rank
    frames = [frames_of(z, np.full(3, sum(shifts[s] for s in z)), seed=k)
              for k, z in enumerate(compositions)]
    fitted = fit_species_energies(frames)
    assert fitted.keys() == shifts.keys()
    np.testing.assert_allclose([fitted[s] for s in shifts], list(shifts.values()), rtol=1e-12)


def test_species_energy_fit_of_one_composition_is_the_minimum_norm_split():
    species = np.array([6, 6, 8, 1, 1, 1, 1, 1, 1])  # ethanol: counts C 2, H 6, O 1
    frames = frames_of(species, [-4209.0, -4211.0, -4210.5])
    mean = frames.energies.mean()
    fitted = fit_species_energies(frames)
    counts = {1: 6, 6: 2, 8: 1}
    for s, c in counts.items():
        assert fitted[s] == pytest.approx(c * mean / 41, rel=1e-12)  # Σ c² = 36 + 4 + 1
    assert sum(fitted[s] for s in species) == pytest.approx(mean, rel=1e-12)
    argon = fit_species_energies(frames_of([18] * 4, [-1.0, -2.0, -3.0]))
    assert argon[18] == pytest.approx(-2.0 / 4, rel=1e-12)


def test_species_energy_fit_uses_only_the_given_indices():
    frames = frames_of([18, 18], [-1.0, -3.0, -100.0])
    assert fit_species_energies(frames, np.array([0, 1]))[18] == pytest.approx(-1.0)


def test_species_energy_fit_without_energies_raises():
    frames = Frames(np.ones(3), np.zeros((2, 3, 3)), None, None, None, source="cg.npz (cg)")
    with pytest.raises(ValueError, match="cg.npz \\(cg\\) has no energies"):
        fit_species_energies(frames)
    with pytest.raises(ValueError, match="indices selects frames of a single Frames"):
        fit_species_energies([frames_of([1], [0.0])], indices=[0])


def test_dataset_from_rmd17_splits_and_fits_shifts_on_train(data_dir):
    path = shared_file(data_dir, "rmd17/rmd17_ethanol_train_01.npz")
    dataset = Dataset.from_path(path, n_train=950, n_validation=50, seed=1)
    train = dataset.subset("train")
    assert (len(train), len(dataset.subset("validation")), len(dataset.subset("test"))) == \
        (950, 50, 0)
    per_molecule = sum(dataset.species_energies[int(s)] for s in train.species)
    assert per_molecule == pytest.approx(train.energies.mean(), rel=1e-12)
    with pytest.raises(ValueError, match="unknown subset 'valid'"):
        dataset.subset("valid")


def test_dataset_of_cg_water_has_no_species_energies(data_dir):
    path = shared_file(data_dir, "cg_water/cg_water_tip3p_300K.npz")
    dataset = Dataset.from_path(path, n_train=100, n_validation=10, n_test=10)
    assert dataset.species_energies == {}
    assert dataset.subset("test").energies is None and len(dataset.subset("test")) == 10
