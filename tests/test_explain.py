"""`jaxrel explain`: n-body tables and the conservation summary on disk."""

import json

import numpy as np
import pytest

from jaxrel.cli import main
from jaxrel.data import read_frames
from jaxrel.graph import build_graphs
from jaxrel.relevance import nbody_decomposition
from jaxrel.train import load_checkpoint, save_checkpoint
from test_train import morse_dimers, small_potential


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain")
    data = morse_dimers(root / "morse.extxyz", n_frames=4)
    pot, params = small_potential("float64", model="painn")
    save_checkpoint(root / "model", pot, params)
    return root / "model", data


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
    (["--order", "4"], "max_order must be between 1 and T + 1 = 2"),
])
def test_explain_rejects_bad_selections_in_one_line(model_and_data, tmp_path, capsys, argv, message):
    model, data = model_and_data
    code = main(["explain", "--model", str(model), "--data", str(data), "--quiet",
                 "--out", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and "\n" not in err
