"""The local chemical potential (Schütt et al. 2018, arXiv:1806.10349): jaxrel.analysis.chempot and
``jaxrel chempot``."""

import json

import ase.io
import ase.io.cube
import jax
import numpy as np
import pytest
from scipy.spatial import cKDTree

from jaxrel.analysis.chempot import (local_chemical_potential, molecular_plane, plane_slice, with_probe,
                                     write_cube)
from jaxrel.checkpoint import save_checkpoint
from jaxrel.cli import main
from jaxrel.graph import build_graphs
from jaxrel.models import ModelConfig, Potential

CUTOFF = 4.0
# formaldehyde in the xy plane: C, O, H, H (Å)
POSITIONS = np.array([[0.0, 0.0, 0.0], [1.21, 0.0, 0.0], [-0.55, 0.94, 0.0], [-0.55, -0.94, 0.0]])
SPECIES = np.array([6, 8, 1, 1])


@pytest.fixture(scope="module")
def model():
    return Potential.create(ModelConfig("schnet", (1, 6, 8), cutoff=CUTOFF, n_features=16, n_interactions=2,
                                        n_rbf=8, dtype="float64"), {1: -13.6, 6: -1029.0, 8: -2041.0},
                            energy_scale=0.5, seed=1)


@pytest.fixture(scope="module")
def result(model):
    """Φ of an H probe on a 20 × 21 × 17 grid whose corners lie beyond the cutoff of every atom."""
    return local_chemical_potential(*model, POSITIONS, SPECIES, "H", spacing=0.6, padding=4.8)


def molecule_graph():
    return build_graphs(POSITIONS, SPECIES, CUTOFF).frame(0)


_atomwise_energy = jax.jit(Potential.atomwise_energy, static_argnums=0)


def atomwise(model, graph) -> np.ndarray:
    potential, params = model
    return np.asarray(_atomwise_energy(potential, params, graph))


def isolated_energy(model, z):
    return float(atomwise(model, build_graphs(np.zeros((1, 3)), [z], CUTOFF).frame(0))[0])


def test_probe_leaves_the_atomwise_energies_of_the_molecule_unchanged(model):
    graph = molecule_graph()
    alone = atomwise(model, graph)
    for point in ([0.6, 0.8, 0.3], [2.0, -0.5, 0.0], [-1.2, 0.9, 0.0]):
        probed = atomwise(model, with_probe(graph, np.array(point), 1, CUTOFF))
        np.testing.assert_array_equal(probed[:4], alone)
        assert abs(probed[4] - isolated_energy(model, 1)) > 1e-4     # the probe does feel the molecule


def test_phi_at_grid_points_equals_the_probe_energy_of_the_full_graph_with_the_probe_sending_nothing(model, result):
    points = result.points().reshape(-1, 3)
    distance, _ = cKDTree(POSITIONS).query(points)
    inside = np.flatnonzero((distance > 0.5) & (distance < CUTOFF - 0.5))
    chosen = inside[np.argsort(np.abs(result.values.ravel()[inside]))[[0, len(inside) // 2, -1]]]
    alone = atomwise(model, molecule_graph())
    for k in chosen:
        full = build_graphs(np.vstack([POSITIONS, points[k]]), np.append(SPECIES, 1), CUTOFF,
                            n_edges=20).frame(0)           # every pair of the 5 atoms: one compilation
        probe_sends_nothing = full._replace(edge_mask=full.edge_mask & (full.senders != 4))
        reference = atomwise(model, probe_sends_nothing)
        np.testing.assert_allclose(result.values.ravel()[k], reference[4] - isolated_energy(model, 1),
                                   rtol=0, atol=1e-12)
        np.testing.assert_allclose(reference[:4], alone, rtol=0, atol=1e-12)
    both_ways = atomwise(model, full)
    assert np.abs(both_ways[:4] - alone).max() > 1e-4     # a probe that sent messages would move the molecule


def test_phi_is_zero_beyond_the_cutoff_of_every_atom_and_not_within(result):
    distance, _ = cKDTree(POSITIONS).query(result.points().reshape(-1, 3))
    phi = result.values.ravel()
    far = distance > CUTOFF + 1e-9
    assert far.sum() > 500
    np.testing.assert_allclose(phi[far], 0.0, rtol=0, atol=1e-12)
    assert np.abs(phi[distance < 2.0]).min() > 1e-6


def test_chunked_evaluation_equals_one_chunk(model):
    options = {"spacing": 0.8, "padding": 1.0}
    chunked = local_chemical_potential(*model, POSITIONS, SPECIES, 1, chunk_size=7, **options)
    whole = local_chemical_potential(*model, POSITIONS, SPECIES, 1, chunk_size=chunked.values.size, **options)
    assert chunked.values.size % 7 != 0                     # the last chunk is padded
    np.testing.assert_allclose(chunked.values, whole.values, rtol=0, atol=1e-13)


def test_grid_spans_the_bounding_box_plus_padding_centred(result):
    upper = result.origin + result.spacing * (np.array(result.values.shape) - 1)
    assert result.values.shape == (20, 21, 17)
    assert (result.origin <= POSITIONS.min(0) - 4.8 + 1e-9).all() and (upper >= POSITIONS.max(0) + 4.8 - 1e-9).all()
    np.testing.assert_allclose(result.origin + upper, POSITIONS.min(0) + POSITIONS.max(0), atol=1e-12)


def test_plane_slice_of_a_planar_molecule_lies_in_its_plane_and_interpolates_within_the_grid(result):
    _, axes = molecular_plane(POSITIONS)
    np.testing.assert_allclose(np.abs(np.cross(axes[0], axes[1])), [0, 0, 1], atol=1e-12)
    cut = plane_slice(result)
    np.testing.assert_allclose(cut.height, 0.0, atol=1e-12)
    finite = cut.values[np.isfinite(cut.values)]
    assert finite.size > 0.9 * cut.values.size
    assert result.values.min() - 1e-12 <= finite.min() and finite.max() <= result.values.max() + 1e-12


def test_cube_file_round_trips_through_ase(result, tmp_path):
    path = write_cube(result, tmp_path / "phi.cube")
    atoms = ase.io.read(path)
    np.testing.assert_array_equal(atoms.numbers, SPECIES)
    np.testing.assert_allclose(atoms.positions, POSITIONS, atol=1e-5)
    data, atoms = ase.io.cube.read_cube_data(str(path))
    np.testing.assert_allclose(data, result.values, rtol=1e-6, atol=1e-12)
    np.testing.assert_array_equal(atoms.numbers, SPECIES)
    with open(path) as f:
        full = ase.io.cube.read_cube(f)
    np.testing.assert_allclose(full["origin"], result.origin, atol=1e-5)
    np.testing.assert_allclose(full["spacing"], np.diag(result.spacing), atol=1e-5)


def test_unknown_probe_species_raises_naming_it_and_the_known_species(model):
    with pytest.raises(ValueError, match=r"probe species 54 \(Xe\) is not one the model was trained on "
                                         r"\(known: 1, 6, 8\)"):
        local_chemical_potential(*model, POSITIONS, SPECIES, "Xe")
    with pytest.raises(ValueError, match="'Qq' is neither an element symbol nor an atomic number"):
        local_chemical_potential(*model, POSITIONS, SPECIES, "Qq")


def test_periodic_frame_raises(model):
    with pytest.raises(ValueError, match="the frame is periodic .* give a free-space frame"):
        local_chemical_potential(*model, POSITIONS, SPECIES, "H", cell=20.0 * np.eye(3))


def test_non_finite_phi_raises_instead_of_returning_nan(model):
    potential, params = model
    poisoned = jax.tree.map(lambda x: x * np.nan, params)
    with pytest.raises(ValueError, match=r"Φ is not finite at \d+ of \d+ grid points, the first at .* Å from atom"):
        local_chemical_potential(potential, poisoned, POSITIONS, SPECIES, "H", spacing=0.8, padding=1.0,
                                 chunk_size=7)


def test_cli_writes_cube_figures_and_json_and_refuses_an_existing_folder(model, tmp_path, capsys):
    potential, params = model
    save_checkpoint(tmp_path / "model", potential, params)
    coords = np.stack([POSITIONS, POSITIONS + [0.0, 0.05, 0.02]])
    data = tmp_path / "formaldehyde.npz"
    np.savez(data, nuclear_charges=SPECIES.astype(np.uint8), coords=coords, energies=np.zeros(2),
             forces=np.zeros((2, 4, 3)))
    def argv(probe):
        return ["chempot", "--model", str(tmp_path / "model"), "--data", str(data), "--frame", "1", "--probe", probe,
                "--spacing", "0.8", "--padding", "1.0", "--out", str(tmp_path / "out")]

    assert main(argv("1")) == 0
    out = tmp_path / "out"
    names = sorted(p.name for p in out.iterdir())
    assert names == ["chempot.json", "chempot_H.cube", "chempot_H_iso.png", "chempot_H_slice.png"]
    expected = local_chemical_potential(potential, params, coords[1], SPECIES, "H", spacing=0.8, padding=1.0)
    values, _ = ase.io.cube.read_cube_data(str(out / "chempot_H.cube"))
    np.testing.assert_allclose(values, expected.values, rtol=1e-6, atol=1e-12)
    summary = json.loads((out / "chempot.json").read_text())
    assert summary["frame"] == 1 and summary["probe_symbol"] == "H" and summary["padding_A"] == 1.0
    assert summary["grid_shape"] == list(expected.values.shape)
    assert summary["min"]["phi_eV"] == pytest.approx(expected.values.min(), abs=1e-12)

    capsys.readouterr()
    assert main(argv("H")) == 2
    assert "already holds an earlier run" in capsys.readouterr().err
    assert main([*argv("Xe"), "--overwrite"]) == 2               # refused before the earlier run is cleared
    assert "probe species 54 (Xe)" in capsys.readouterr().err
    assert (out / "chempot_H.cube").is_file()
    assert main([*argv("H"), "--overwrite"]) == 0


def test_a_gap_model_has_no_chemical_potential():
    from jaxrel.models import ModelConfig, Potential

    potential, params = Potential.create(ModelConfig("schnet", (1, 8), cutoff=3.0, n_features=8, n_interactions=1,
                                                     n_rbf=6, dtype="float64", target="gap", readout="mean"))
    with pytest.raises(ValueError, match="the local chemical potential needs a model of the energy"):
        local_chemical_potential(potential, params, np.array([[0.0, 0, 0], [0.96, 0, 0]]), [8, 1], "H")
