"""Readers, splits and species-energy fits of jaxrel.data."""

import json
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


def write_rmd17(path, **overrides):
    """A tiny rMD17-layout npz (water, 4 frames, kcal/mol) with ``overrides`` replacing keys."""
    rng = np.random.default_rng(4)
    arrays = dict(nuclear_charges=np.array([8, 1, 1], np.uint8),
                  coords=rng.uniform(-2, 2, (4, 3, 3)), energies=rng.normal(size=4),
                  forces=rng.normal(size=(4, 3, 3)))
    arrays.update(overrides)
    np.savez(path, **arrays)
    return path


def with_entry(shape, index, value):
    """Random array of ``shape`` with ``value`` at ``index``."""
    a = np.random.default_rng(5).normal(size=shape)
    a[index] = value
    return a


@pytest.mark.parametrize("key, value, message", [
    ("energies", with_entry(4, 2, np.nan), r"frame 2 has a non-finite energy nan eV"),
    ("energies", with_entry(4, 0, -np.inf), r"frame 0 has a non-finite energy -inf eV"),
    ("forces", with_entry((4, 3, 3), (1, 2, 0), np.inf),
     r"frame 1, atom 2 has a non-finite force \[inf, "),
    ("forces", with_entry((4, 3, 3), (3, 0, 2), np.nan), r"frame 3, atom 0 has a non-finite force")])
def test_non_finite_label_names_the_frame_and_atom(tmp_path, key, value, message):
    path = write_rmd17(tmp_path / "labels.npz", **{key: value})
    with pytest.raises(ValueError, match=r"labels.npz \(rmd17\): " + message):
        read_frames(path)


def damaged(path: Path, kind: str) -> Path:
    """A copy of the npz ``path`` damaged in the way ``kind`` names."""
    raw = path.read_bytes()
    out = path.with_name(f"{kind}.npz")
    if kind == "first_half":
        out.write_bytes(raw[:len(raw) // 2])
    elif kind == "random_bytes":
        out.write_bytes(np.random.default_rng(6).bytes(len(raw)))
    elif kind == "text":
        out.write_text("nuclear_charges coords energies forces\n8 1 1\n")
    elif kind == "bare_npy":
        np.save(out.with_suffix(".npy"), np.zeros((4, 3, 3)))
        out.with_suffix(".npy").rename(out)
    return out


@pytest.mark.parametrize("kind", ["first_half", "random_bytes", "text"])
def test_truncated_corrupt_or_foreign_npz_is_one_value_error(tmp_path, kind):
    path = damaged(write_rmd17(tmp_path / "water.npz"), kind)
    with pytest.raises(ValueError, match=f"{kind}.npz is not an npz archive numpy can open .*np.savez$"):
        read_frames(path)


def test_bare_npy_named_npz_asks_for_an_archive(tmp_path):
    path = damaged(write_rmd17(tmp_path / "water.npz"), "bare_npy")
    with pytest.raises(ValueError, match="bare_npy.npz holds one bare .npy array, not an .npz"):
        read_frames(path)


def test_npz_with_a_damaged_array_names_the_key(tmp_path):
    coords = np.random.default_rng(7).uniform(-2, 2, (4, 3, 3))
    path = write_rmd17(tmp_path / "water.npz", coords=coords)
    raw = bytearray(path.read_bytes())
    at = raw.index(coords.tobytes()) + 40
    raw[at] ^= 0xFF  # flip one byte of the stored coordinates: the member's CRC no longer matches
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"water.npz \(rmd17\): the array 'coords' cannot be "
                                         r"read \(Bad CRC-32"):
        read_frames(path)


@pytest.mark.parametrize("key, value, message", [
    ("energies", np.array(["a", "b", "c", "d"]), "the array 'energies' holds <U1 values; "
                                                  "store it as numbers$"),
    ("energies", np.array([1.0, None, 2.0, 3.0], dtype=object),
     "the array 'energies' cannot be read \\(Object arrays"),
    ("nuclear_charges", np.array([8 + 0j, 1, 1]), "'nuclear_charges' holds complex128 values; "
                                                  "store it as numbers or element symbols")])
def test_npz_array_that_is_not_numbers_names_the_key(tmp_path, key, value, message):
    path = write_rmd17(tmp_path / "typed.npz", **{key: value})
    with pytest.raises(ValueError, match=message):
        read_frames(path)


def test_folder_given_as_data_raises(tmp_path):
    with pytest.raises(ValueError, match=f"{tmp_path} is a folder; give the path of a data file"):
        read_frames(tmp_path)


@pytest.mark.parametrize("name, content, message", [
    ("junk.xyz", "not an xyz file\n1 2 3\n",
     r"junk.xyz \(ase\) cannot be read by ase \(XYZError: .*\); check that the file is complete"),
    ("binary.extxyz", bytes(range(256)),
     r"binary.extxyz \(ase\) cannot be read by ase \(UnicodeDecodeError: "),
    ("data.foo", "1 2 3\n", "data.foo is of a kind neither jaxrel nor ase recognises"),
    ("blank.extxyz", "\n\n", r"blank.extxyz \(ase\) holds no frames"),
    ("atomless.extxyz", "0\n\n", r"atomless.extxyz \(ase\) has no atoms")])
def test_file_ase_cannot_read_gives_one_sentence(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError, match=message):
        read_frames(path)


def test_truncated_extxyz_and_unknown_format_name_the_file_or_format(tmp_path):
    path = tmp_path / "water.extxyz"
    ase.io.write(path, [ase.Atoms("OH2", positions=np.eye(3))] * 3)
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(ValueError, match=r"water.extxyz \(ase\) cannot be read by ase"):
        read_frames(path)
    with pytest.raises(ValueError, match="format 'xyzz' is neither an npz layout"):
        read_frames(write_rmd17(tmp_path / "water.npz"), format="xyzz")


@pytest.mark.parametrize("species", [np.array(["O", "H", "H"]), np.array([b"O", b"H", b"H"]),
                                     np.array([8.0, 1.0, 1.0])])
def test_species_as_element_symbols_or_integral_floats_become_atomic_numbers(tmp_path, species):
    frames = read_frames(write_rmd17(tmp_path / "symbols.npz", nuclear_charges=species))
    assert frames.species.dtype == np.int32
    np.testing.assert_array_equal(frames.species, [8, 1, 1])
    write_noble_gas(tmp_path / "argon.npz", species=np.array(["Ar"] * 5))
    np.testing.assert_array_equal(read_frames(tmp_path / "argon.npz").species, [18] * 5)


@pytest.mark.parametrize("species, message", [
    (["O", "Xx", "H"], "atom 1 has species 'Xx', which is not an element symbol"),
    (["O", "H", "X"], "atom 2 has species 'X', which is not an element symbol"),
    ([8.0, 1.5, 1.0], "atom 1 has species 1.5, which is not an integer ≥ 1"),
    ([8, 0, 1], "atom 1 has species 0, which is not an integer ≥ 1"),
    ([8, 1, -6], "atom 2 has species -6, which is not an integer ≥ 1"),
    ([np.nan, 1, 1], "atom 0 has species nan, which is not an integer ≥ 1")])
def test_bad_species_names_the_atom(tmp_path, species, message):
    path = write_rmd17(tmp_path / "species.npz", nuclear_charges=np.array(species))
    with pytest.raises(ValueError, match=r"species.npz \(rmd17\): " + message):
        read_frames(path)


def test_zero_atoms_raises(tmp_path):
    path = write_rmd17(tmp_path / "atomless.npz", nuclear_charges=np.zeros(0, np.uint8),
                       coords=np.zeros((4, 0, 3)), forces=np.zeros((4, 0, 3)))
    with pytest.raises(ValueError, match=r"atomless.npz \(rmd17\) has no atoms \(positions "
                                         r"have shape \(4, 0, 3\)\)"):
        read_frames(path)


def per_frame_cells(frame, value):
    cells = np.stack([10.0 * np.eye(3)] * 4)
    cells[frame] = value
    return cells


@pytest.mark.parametrize("cell, message", [
    (np.zeros((3, 3)), r"cell \[\[0.0, 0.0, 0.0\].* has volume 0 Å³"),
    (np.array([[10.0, 0, 0], [20.0, 0, 0], [0, 0, 10.0]]), "cell .* has volume 0 Å³; pass "
                                                          "three linearly independent"),
    (np.diag([10.0, np.nan, 10.0]), "cell .* holds NaN or inf"),
    (per_frame_cells(2, 0.0), "cell of frame 2 .* has volume 0 Å³"),
    (per_frame_cells(1, np.inf), "cell of frame 1 .* holds NaN or inf")])
def test_degenerate_or_non_finite_cell_names_the_frame(tmp_path, cell, message):
    write_noble_gas(tmp_path / "cell.npz", cell=cell)
    with pytest.raises(ValueError, match=r"cell.npz \(noble_gas\): " + message):
        read_frames(tmp_path / "cell.npz")


def test_water_cells_of_wrong_shape_or_nan_raise(tmp_path):
    rng = np.random.default_rng(8)
    arrays = dict(atomic_numbers=np.array([8, 1, 1]), coords=rng.normal(size=(4, 3, 3)),
                  energies=np.zeros(4), forces=np.zeros((4, 3, 3)))
    np.savez(tmp_path / "flat.npz", cells=np.full((4, 3), 12.0), **arrays)
    with pytest.raises(ValueError, match=r"cell has shape \(4, 3\); give one \(3, 3\) cell"):
        read_frames(tmp_path / "flat.npz")
    np.savez(tmp_path / "nan.npz", cells=np.full((4, 3, 3), np.nan), **arrays)
    with pytest.raises(ValueError, match="cell of frame 0 .* holds NaN or inf"):
        read_frames(tmp_path / "nan.npz")


def test_extxyz_with_zero_cell_or_partial_periodicity_raises(tmp_path):
    path = tmp_path / "zero_cell.extxyz"
    ase.io.write(path, [ase.Atoms("OH2", positions=np.eye(3), cell=np.zeros((3, 3)), pbc=True)])
    with pytest.raises(ValueError, match=r"zero_cell.extxyz \(ase\): cell .* has volume 0"):
        read_frames(path)
    path = tmp_path / "slab.extxyz"
    ase.io.write(path, [ase.Atoms("OH2", positions=np.eye(3), cell=10 * np.eye(3),
                                  pbc=[True, True, k == 0]) for k in range(2)])
    with pytest.raises(ValueError, match=r"frame 1 has pbc \[True, True, False\] but jaxrel needs"):
        read_frames(path)


def test_cg_box_of_wrong_shape_or_bad_bead_types_raise(tmp_path):
    coords = np.random.default_rng(9).uniform(0, 10, (2, 2, 3))
    np.savez(tmp_path / "square.npz", types=np.array([0, 0]), coords=coords, box=10 * np.eye(3))
    with pytest.raises(ValueError, match=r"box has shape \(3, 3\); give the orthorhombic box"):
        read_frames(tmp_path / "square.npz")
    for types, shown in (([0, -1], "-1"), ([0.5, 0], "0.5")):
        np.savez(tmp_path / "types.npz", types=np.array(types), coords=coords, box=np.full(3, 10.0))
        with pytest.raises(ValueError, match=f"has type {shown}, which is not an integer ≥ 0"):
            read_frames(tmp_path / "types.npz")


@pytest.mark.parametrize("relative, mass", [("cg_water/cg_water_tip3p_300K.npz", 18.015),
                                            ("cg_methane/cg_methane_opls_105K.npz", 16.043)])
def test_shared_cg_beads_weigh_one_molecule_named_by_the_sidecar(data_dir, relative, mass):
    """H2O = 2 × 1.008 + 15.999 and CH4 = 12.011 + 4 × 1.008 amu (ase's standard atomic weights)."""
    frames = read_frames(shared_file(data_dir, relative))
    assert frames.coarse_grained and frames.masses.shape == frames.species.shape
    np.testing.assert_allclose(frames.masses, mass, rtol=0, atol=1e-9)
    assert frames.select([0, 1]).masses is frames.masses


def write_cg(path, sidecar=None, n_beads=6, types=None):
    """A two-frame CG npz (box 10 Å) at ``path``, with ``sidecar`` (a dict) as its .json."""
    coords = np.random.default_rng(2).uniform(0, 10, (2, n_beads, 3))
    np.savez(path, types=np.zeros(n_beads, int) if types is None else np.asarray(types), coords=coords,
             box=np.full(3, 10.0))
    if sidecar is not None:
        path.with_suffix(".json").write_text(json.dumps(sidecar))
    return path


@pytest.mark.parametrize("sidecar, types, mass", [
    ({"system": "SPC/E Water, GROMACS", "n_molecules": 6}, None, 18.015),
    ({"system": "united-atom methane"}, None, 16.043),
    (None, None, None),                                                   # no sidecar
    ({"system": "a water–methane mixture"}, None, None),                  # names two molecules
    ({"system": "TIP3P water", "n_molecules": 3}, None, None),            # not one bead per molecule
    ({"system": "TIP3P water"}, [0, 1, 0, 1, 0, 1], None),                # two bead types
    ({"system": "waterfall"}, None, None),                                # not the word
    (["water"], None, None),                                              # not a JSON object
])
def test_cg_bead_masses_follow_the_sidecar_rule_or_are_none(tmp_path, sidecar, types, mass):
    frames = read_frames(write_cg(tmp_path / "cg.npz", sidecar, types=types))
    assert frames.coarse_grained
    if mass is None:
        assert frames.masses is None
    else:
        np.testing.assert_allclose(frames.masses, np.full(6, mass), atol=1e-9)


def test_a_corrupt_sidecar_gives_no_masses_and_other_formats_are_not_coarse_grained(tmp_path):
    path = write_cg(tmp_path / "cg.npz")
    path.with_suffix(".json").write_text("{not json")
    assert read_frames(path).masses is None
    frames = frames_of([1, 8, 1], np.arange(2.0))
    assert frames.masses is None and not frames.coarse_grained


@pytest.mark.parametrize("masses, message", [
    (np.array([1.0, -2.0, 1.0]), "atom 1 has the mass -2.0 amu"),
    (np.array([1.0, np.nan, 1.0]), "atom 1 has the mass nan amu"),
    (np.ones(2), r"masses have shape \(2,\)"),
])
def test_bad_masses_name_the_atom_or_shape(masses, message):
    with pytest.raises(ValueError, match=message):
        Frames(np.array([1, 8, 1]), np.zeros((1, 3, 3)) + np.arange(3)[:, None], None, None, None,
               source="x", masses=masses)


def test_select_slices_per_frame_arrays_and_keeps_shared_ones():
    frames = frames_of([1, 8, 1], np.arange(5.0))
    periodic = Frames(frames.species, frames.positions, frames.energies, frames.positions,
                      cell=np.arange(1, 6)[:, None, None] * np.eye(3), source="per-frame cells")
    for index in (slice(1, 3), np.array([1, 2]), np.array([False, True, True, False, False])):
        picked = periodic.select(index)
        np.testing.assert_array_equal(picked.energies, [1.0, 2.0])
        np.testing.assert_array_equal(picked.positions, frames.positions[1:3])
        np.testing.assert_array_equal(picked.forces, frames.positions[1:3])
        np.testing.assert_array_equal(picked.cell, [2 * np.eye(3), 3 * np.eye(3)])
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
