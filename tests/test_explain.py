"""`jaxrel.explain` and `jaxrel explain`: n-body tables per frame, the conservation
accounting, and the explained folder on disk (save/load round trip, format check).

Fixture ``model_and_data`` (conftest): a saved float64 one-interaction PaiNN for H/O and a
4-frame Morse-dimer file.
"""

import json

import numpy as np
import pytest

import jaxrel
from helpers import argon_potential, liquid
from jaxrel.checkpoint import load_checkpoint
from jaxrel.cli import main
from jaxrel.data import read_frames
from jaxrel.graph import build_graphs, pad_graph
from jaxrel.models import ModelConfig
from jaxrel.relevance import Explanation, Table, nbody_decomposition

COLUMNS = ("frame", "atoms", "species", "relevance", "distances", "angles")


def assert_tables_equal(got: Table, expected: Table, rtol=0.0):
    """Same terms in the same order: integer columns and geometry exactly, relevance to ``rtol``."""
    assert got.order == expected.order and len(got) == len(expected)
    for key in ("frame", "atoms", "species"):
        np.testing.assert_array_equal(getattr(got, key), getattr(expected, key), err_msg=key)
    np.testing.assert_allclose(got.distances, expected.distances, rtol=1e-12, err_msg="distances")
    if expected.angles is None:
        assert got.angles is None
    else:
        np.testing.assert_allclose(got.angles, expected.angles, rtol=1e-12, atol=1e-10, err_msg="angles")
    np.testing.assert_allclose(got.relevance, expected.relevance, rtol=rtol, atol=0.0, err_msg="relevance")


def test_explain_writes_tables_that_match_the_engine_and_a_conserving_summary(model_and_data, tmp_path):
    model, data = model_and_data
    out = tmp_path / "explained"
    assert main(["explain", "--model", str(model), "--data", str(data), "--frames", "1:3",
                 "--order", "2", "--quiet", "--out", str(out)]) == 0
    tables = np.load(out / "nbody.npz")
    summary = json.loads((out / "summary.json").read_text())
    assert [f["frame"] for f in summary["frames"]] == [1, 2]
    pot, params, _ = load_checkpoint(model)
    frames = read_frames(data)
    graph = build_graphs(frames.positions[2], frames.species, pot.config.cutoff).frame(0)
    nb = nbody_decomposition(pot, params, graph, max_order=2)
    rows = tables["order2_frame"] == 2
    np.testing.assert_allclose(tables["order2_relevance"][rows], nb.orders[2].relevance, rtol=1e-10)
    np.testing.assert_array_equal(tables["order2_atoms"][rows], nb.orders[2].atoms)
    np.testing.assert_array_equal(tables["order2_species"][rows], nb.orders[2].species)
    frame = summary["frames"][1]
    assert frame["energy_eV"] == pytest.approx(nb.energy)
    listed = sum(frame["body_order_totals_eV"].values()) + frame["higher_order_residual_eV"]
    assert listed == pytest.approx(frame["sum_relevance_eV"], abs=1e-10)
    assert frame["energy_eV"] == pytest.approx(
        frame["species_shift_eV"] + frame["sum_relevance_eV"] + frame["conservation_error_eV"], abs=1e-10)
    assert frame["species_shift_eV"] == pytest.approx(-6.0 - 2 * 4.0)


@pytest.mark.parametrize("argv, message", [
    (["--frames", "7:9"], "selects no frame of the 4"),
    (["--frames", "a:b"], "is not an index"),
    (["--order", "4"], "max_order (--order) must be between 1 and T + 1 = 2"),
])
def test_explain_rejects_bad_selections_in_one_line(model_and_data, tmp_path, capsys, argv, message):
    model, data = model_and_data
    code = main(["explain", "--model", str(model), "--data", str(data), "--quiet",
                 "--out", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and "\n" not in err


def test_explain_of_frames_and_of_a_padded_graph_equals_the_nbody_decomposition_of_each_frame(model_and_data):
    model, data = model_and_data
    pot, params, _ = load_checkpoint(model)
    frames = read_frames(data)
    explanation = jaxrel.explain(pot, params, frames, max_order=2)
    assert isinstance(explanation, jaxrel.Explanation)
    graph = build_graphs(frames.positions, frames.species, pot.config.cutoff)
    padded = pad_graph(graph, graph.n_atoms + 2, graph.n_edges + 5)
    padded = padded._replace(positions=padded.positions.at[:, graph.n_atoms:].set(0.3))
    from_graph = jaxrel.explain(pot, params, padded, max_order=2, frame_index=[10, 11, 12, 13])

    np.testing.assert_array_equal(explanation.frames, [0, 1, 2, 3])
    np.testing.assert_array_equal(from_graph.frames, [10, 11, 12, 13])
    assert sorted(explanation.tables) == sorted(from_graph.tables) == [1, 2]
    energy, forces = pot.energy_and_forces(params, graph)
    for k in range(len(frames)):
        nb = nbody_decomposition(pot, params, graph.frame(k), max_order=2, frame=k)
        for n, table in nb.orders.items():
            assert_tables_equal(explanation.tables[n].select(explanation.tables[n].frame == k), table,
                                rtol=1e-12)
            mine = from_graph.tables[n].select(from_graph.tables[n].frame == 10 + k)
            assert_tables_equal(mine, Table(np.full(len(table), 10 + k), table.atoms, table.species,
                                            table.relevance, table.distances, table.angles), rtol=1e-10)
        for e in (explanation, from_graph):
            assert e.energy[k] == pytest.approx(nb.energy, rel=1e-12)
            assert e.sum_relevance[k] == pytest.approx(nb.total, rel=1e-10)
            assert e.higher_order_residual[k] == pytest.approx(nb.residual, abs=1e-10)
    for e in (explanation, from_graph):
        np.testing.assert_allclose(e.energy, energy, rtol=1e-12)
        np.testing.assert_allclose(e.atomwise_energy, pot.atomwise_energy(params, graph), rtol=1e-12)
        np.testing.assert_array_equal(e.positions, frames.positions)  # real atoms only
        np.testing.assert_array_equal(e.species, frames.species)
        assert e.cell is None and e.n_atoms == 3 and e.max_order == 2 and e.seconds.shape == (4,)
        assert e.metadata["rule"] == "gi" and e.metadata["model_config"] == pot.config.to_dict()
    assert np.abs(explanation.higher_order_residual).max() < 1e-10  # max_order = T + 1


def test_explanation_accounting_conserves_the_energy_and_the_shift_is_the_models(model_and_data):
    """E = species shifts + Σ relevance + conservation error, with E the model's energy,
    the shift Σ_i e_{Z_i} from Potential.species_shifts, Σ relevance the Σ of the listed
    n-body terms plus the higher-order residual."""
    model, data = model_and_data
    pot, params, _ = load_checkpoint(model)
    frames = read_frames(data).select(slice(1, 3))
    e = jaxrel.explain(pot, params, frames, max_order=1, frame_index=[1, 2])
    shifts = pot.species_shifts(params)
    assert shifts == {1: pytest.approx(-4.0), 8: pytest.approx(-6.0)}
    np.testing.assert_allclose(e.species_shift, sum(shifts[int(z)] for z in frames.species), rtol=1e-12)
    np.testing.assert_allclose(e.energy, pot.energy(params, build_graphs(frames.positions, frames.species,
                                                                         pot.config.cutoff)), rtol=1e-12)
    np.testing.assert_allclose(e.energy, e.species_shift + e.sum_relevance + e.conservation_error,
                               rtol=0, atol=1e-12)
    np.testing.assert_allclose(e.order_totals(1) + e.higher_order_residual, e.sum_relevance, rtol=0, atol=1e-10)
    assert np.abs(e.higher_order_residual).min() > 1e-6  # max_order 1 < T + 1 leaves the pairs out
    np.testing.assert_array_equal(e.frame_rows(np.array([2, 1])), [1, 0])


@pytest.fixture(scope="module")
def argon_explanation():
    """Two periodic argon frames explained up to 3-body terms by a T = 2 SchNet."""
    pot, params = argon_potential("schnet")
    atoms = [liquid(seed=0), liquid(seed=1)]
    graph = build_graphs(np.stack([a.positions for a in atoms]), atoms[0].numbers, pot.config.cutoff,
                         cell=atoms[0].cell.array)
    return pot, params, graph, jaxrel.explain(pot, params, graph, max_order=3, frame_index=[5, 9],
                                              model_path="some/model", data_path="some/data.npz")


def test_explain_of_a_periodic_graph_gives_angles_and_the_cell(argon_explanation):
    pot, params, graph, e = argon_explanation
    assert sorted(e.tables) == [1, 2, 3] and e.tables[3].angles.shape == (len(e.tables[3]), 3)
    assert ((e.tables[3].angles >= 0) & (e.tables[3].angles <= 180)).all()
    np.testing.assert_array_equal(e.cell, np.broadcast_to(np.asarray(graph.cell), (2, 3, 3)))
    nb = nbody_decomposition(pot, params, graph.frame(1), max_order=3, frame=9)
    for n, table in nb.orders.items():
        assert_tables_equal(e.tables[n].select(e.tables[n].frame == 9), table, rtol=1e-12)
    assert e.metadata["model"] == "some/model" and e.metadata["data"] == "some/data.npz"


def test_explanation_save_then_load_round_trips_every_field_exactly(argon_explanation, tmp_path):
    *_, e = argon_explanation
    assert e.save(tmp_path / "x") == tmp_path / "x"
    loaded = Explanation.load(tmp_path / "x")
    assert sorted(loaded.tables) == sorted(e.tables)
    for n, table in e.tables.items():
        for key in COLUMNS:
            if key == "angles" and n != 3:
                assert loaded.tables[n].angles is None
                continue
            np.testing.assert_array_equal(getattr(loaded.tables[n], key), getattr(table, key), err_msg=f"{n}: {key}")
            assert getattr(loaded.tables[n], key).dtype == getattr(table, key).dtype
    for key in ("frames", "energy", "species_shift", "sum_relevance", "higher_order_residual", "seconds",
                "positions", "species", "cell", "atomwise_energy", "conservation_error"):
        np.testing.assert_array_equal(getattr(loaded, key), getattr(e, key), err_msg=key)
    assert loaded.metadata.keys() == e.metadata.keys()
    for key, value in e.metadata.items():
        if key != "model_config":
            assert loaded.metadata[key] == value, key
    assert ModelConfig.from_dict(loaded.metadata["model_config"]) == ModelConfig.from_dict(e.metadata["model_config"])
    summary = json.loads((tmp_path / "x" / "summary.json").read_text())
    assert summary["max_order"] == 3 and summary["frames"][1]["frame"] == 9
    assert summary["frames"][0]["n_terms"] == {str(n): int((t.frame == 5).sum()) for n, t in e.tables.items()}


def test_explanation_metadata_round_trips_exactly(argon_explanation, tmp_path):
    *_, e = argon_explanation
    assert Explanation.load(e.save(tmp_path / "x")).metadata == e.metadata


def test_loading_a_newer_format_is_a_one_line_error_naming_the_format(argon_explanation, tmp_path):
    *_, e = argon_explanation
    folder = e.save(tmp_path / "x")
    summary = json.loads((folder / "summary.json").read_text())
    summary["format"] = 99
    (folder / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(ValueError, match="format 99") as info:
        Explanation.load(folder)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_order=4), "max_order (--order) must be between 1 and T + 1 = 3"),
    (dict(frame_index=[1, 2, 3]), "frame_index has 3 entries for 2 frames"),
    (dict(rules="lrp-nonsense"), "lrp-nonsense"),
])
def test_explain_rejects_bad_arguments_in_one_line(argon_explanation, kwargs, message):
    pot, params, graph, _ = argon_explanation
    with pytest.raises(ValueError) as info:
        jaxrel.explain(pot, params, graph, **{"max_order": 2, **kwargs})
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("column, value, message", [
    ("distances", np.zeros((3, 2)), r"distances has shape \(3, 2\), expected \(2, 3\)"),
    ("atoms", np.zeros((2, 2), int), r"species has shape \(2, 3\), expected \(2, 2\)"),
    ("angles", None, r"angles has shape None, expected \(2, 3\)"),
])
def test_a_table_with_misshaped_columns_is_rejected_in_one_line(column, value, message):
    columns = dict(frame=np.zeros(2), atoms=np.array([[0, 1, 2], [1, 2, 3]]), species=np.full((2, 3), 18),
                   relevance=np.zeros(2), distances=np.ones((2, 3)), angles=np.full((2, 3), 60.0))
    columns[column] = value
    with pytest.raises(ValueError, match=message) as info:
        Table(**columns)
    assert "\n" not in str(info.value)
