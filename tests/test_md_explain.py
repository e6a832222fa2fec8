"""GNN-LRP explanations recorded along MD runs (:class:`jaxrel.md.ExplanationRecorder`,
``jaxrel md --explain-every``): the records equal :func:`jaxrel.explain` of the same positions,
bad settings are refused before anything is written, and explain.csv / explain_pairs.csv
continue exactly across --restart.

One float64 two-interaction H/O SchNet (body orders up to 3, so order 2 leaves a 3-body
residual), an O–H–H molecule and two Langevin replicas throughout, so that the compiled MD and
decomposition are shared by every test.
"""

import json

import numpy as np
import pytest

from helpers import morse_dimers
from jaxrel import build_graphs, explain
from jaxrel.checkpoint import save_checkpoint
from jaxrel.cli import main
from jaxrel.data import read_frames
from jaxrel.md import PAIR_COLUMNS, ExplanationRecorder, MDConfig, explain_columns, read_explanations, simulate
from jaxrel.models import ModelConfig, Potential

WATER = np.array([[0.0, 0, 0], [0.97, 0, 0], [-0.25, 0.93, 0]])
SPECIES = np.array([8, 1, 1])
CONFIG = MDConfig("nvt-langevin", dt_fs=0.5, n_steps=60, log_every=10)


def two_layer_potential(**changes):
    """A float64 two-interaction H/O SchNet (cutoff 3 Å) with shifts {1: −4, 8: −6} eV."""
    model = changes.pop("model", "schnet")
    config = dict(cutoff=3.0, n_features=8, n_interactions=2, n_rbf=8, dtype="float64") | changes
    return Potential.create(ModelConfig(model, (1, 8), **config),
                            {1: -4.0, 8: -6.0}, energy_scale=0.5, seed=0)


@pytest.fixture(scope="module")
def molecule():
    return two_layer_potential()


@pytest.fixture(scope="module")
def saved(molecule, tmp_path_factory):
    """The model saved as a checkpoint and a 6-frame Morse O–H–H file."""
    root = tmp_path_factory.mktemp("md_explain")
    save_checkpoint(root / "model", *molecule)
    return root / "model", morse_dimers(root / "morse.extxyz", n_frames=6)


def test_recorded_totals_and_top_pairs_equal_explain_of_the_trajectory_positions(molecule):
    """Every 20 steps (every second logged frame, the initial one included) each replica's record
    must equal explain() run afterwards on the trajectory's positions at that time: the body-order
    totals, the residual and the two pairs of largest |R₂| in order (of the molecule's three)."""
    potential, params = molecule
    starts = np.stack([WATER, WATER + 0.05 * np.random.default_rng(0).normal(size=(3, 3))])
    recorder = ExplanationRecorder(potential, params, SPECIES, config=CONFIG, every=20, order=2, top=2)
    traj = simulate(potential, params, starts, SPECIES, config=CONFIG, progress=False, on_block=recorder)
    got = recorder.explanations
    assert got.time_ps.tolist() == np.repeat(traj.time_ps[::2], 2).tolist() == np.repeat([0, .01, .02, .03], 2).tolist()
    assert got.replica.tolist() == [0, 1] * 4 and got.order_totals.shape == (8, 2)
    assert np.ptp(got.order_totals[got.replica == 0, 1]) > 1e-3      # the explanation changes along the run
    assert np.abs(got.residual).max() > 1e-5                         # 3-body terms of the two-layer model
    for k, (t, r) in enumerate(zip(got.time_ps, got.replica)):
        frame = int(np.flatnonzero(traj.time_ps == t)[0])
        expected = explain(potential, params, build_graphs(traj.positions[r, frame], SPECIES, 3.0), max_order=2)
        np.testing.assert_allclose(got.order_totals[k], [expected.order_totals(n)[0] for n in (1, 2)],
                                   rtol=0, atol=1e-10)
        np.testing.assert_allclose(got.residual[k], expected.higher_order_residual[0], rtol=0, atol=1e-10)
        pairs, table = got.record_pairs(k), expected.tables[2]
        best = np.argsort(-np.abs(table.relevance))[:2]
        np.testing.assert_array_equal(pairs.atoms, table.atoms[best])
        np.testing.assert_array_equal(pairs.species, table.species[best])
        np.testing.assert_allclose(pairs.distances, table.distances[best], rtol=0, atol=1e-10)
        np.testing.assert_allclose(pairs.relevance, table.relevance[best], rtol=0, atol=1e-10)


@pytest.mark.parametrize("every", [15, 5, 0])
def test_explain_every_off_the_log_grid_is_refused_before_the_output_folder_exists(saved, tmp_path, capsys, every):
    out = tmp_path / "run"
    code = main(["md", "--model", str(saved[0]), "--data", str(saved[1]), "--log-every", "10", "--time", "0.01",
                 "--explain-every", str(every), "--quiet", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and not out.exists()
    assert f"--explain-every is {every} steps, which is not a positive multiple of --log-every 10; pass a " \
           "multiple of 10" in err


def test_explain_order_and_top_without_explain_every_are_refused(saved, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["md", "--model", str(saved[0]), "--data", str(saved[1]), "--explain-order", "3", "--quiet",
                 "--out", str(out)])
    assert code == 2 and "--explain-order only apply with --explain-every" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("order, top, message", [
    (4, 5, "--explain-order is 4, but a model with 2 interactions has terms of body order 1 to 3"),
    (0, 0, "--explain-order is 0"),
    (1, 5, "pairs need --explain-order 2 or more"),
    (2, -1, "--explain-top is -1"),
])
def test_an_order_above_n_interactions_plus_one_or_a_bad_top_is_refused(molecule, order, top, message):
    with pytest.raises(ValueError, match=message):
        ExplanationRecorder(*molecule, SPECIES, config=CONFIG, every=10, order=order, top=top)


@pytest.mark.parametrize("changes, message", [
    ({"model": "bodyordered", "n_interactions": 1}, "has no message-passing layers"),
    ({"target": "gap", "readout": "mean"}, "needs a model of the energy"),
])
def test_a_model_without_layers_or_energies_is_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        ExplanationRecorder(*two_layer_potential(**changes), SPECIES, config=CONFIG, every=10)


def md_args(saved, out, *extra):
    return ["md", "--model", str(saved[0]), "--data", str(saved[1]), "--ensemble", "nvt-langevin", "--dt", "0.5",
            "--log-every", "10", "--replicas", "2", "--explain-every", "10", "--quiet", "--out", str(out), *extra]


EXPLAINED = ("explain.csv", "explain_pairs.csv")


def test_a_restarted_run_continues_explain_csv_without_duplicated_or_missing_rows(saved, tmp_path):
    """Two blocks in one run, or one block, a half-written row past what the restart file records
    (a killed write), and a --restart: the same explanation files to the byte, 3 times × 2 replicas."""
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert main(md_args(saved, whole, "--time", "0.01")) == 0
    assert main(md_args(saved, split, "--time", "0.005")) == 0
    with (split / "explain.csv").open("a") as f:
        f.write("0.005,0,0.13")
    assert main(md_args(saved, split, "--time", "0.01", "--restart")) == 0
    for name in EXPLAINED:
        assert (whole / name).read_bytes() == (split / name).read_bytes()
    rows = np.genfromtxt(split / "explain.csv", delimiter=",", names=True)
    assert list(zip(rows["time_ps"], rows["replica"])) == [(t, r) for t in (0.0, 0.005, 0.01) for r in (0, 1)]
    assert len(np.genfromtxt(split / "explain_pairs.csv", delimiter=",", names=True)) == 6 * 3
    assert main(md_args(saved, split, "--time", "0.015", "--restart", "--explain-every", "20")) == 2


def test_the_md_command_writes_explain_csv_pairs_and_the_change_before_instability(molecule, saved, tmp_path):
    """Headers as documented; the initial record equals explain() of the data frame (the run's exact
    start); stability.json gives each replica's first and last record and their change, without NaN."""
    out = tmp_path / "run"
    assert main(md_args(saved, out, "--time", "0.01", "--frame", "1", "--explain-order", "3",
                        "--explain-top", "2")) == 0
    lines = {name: (out / name).read_text().splitlines() for name in EXPLAINED}
    assert lines["explain.csv"][0] == "time_ps,replica,sum_1body_eV,sum_2body_eV,sum_3body_eV,residual_eV"
    assert tuple(lines["explain.csv"][0].split(",")) == explain_columns(3)
    assert tuple(lines["explain_pairs.csv"][0].split(",")) == PAIR_COLUMNS
    assert len(lines["explain.csv"]) == 1 + 3 * 2 and len(lines["explain_pairs.csv"]) == 1 + 3 * 2 * 2
    recorded = read_explanations(out)
    data = read_frames(saved[1])
    expected = explain(*molecule, build_graphs(data.positions[1], data.species, 3.0), max_order=3)
    for k in (0, 1):   # both replicas start from frame 1
        np.testing.assert_allclose(recorded.order_totals[k], [expected.order_totals(n)[0] for n in (1, 2, 3)],
                                   rtol=0, atol=1e-10)
    np.testing.assert_allclose(recorded.residual[:2], 0.0, atol=1e-10)   # order 3 = n_interactions + 1: nothing left
    report = json.loads((out / "stability.json").read_text(),
                        parse_constant=lambda c: pytest.fail(f"stability.json holds {c}"))
    assert report["explain"] == {"every_steps": 10, "order": 3, "top": 2, "rule": "gi", "n_records": 6}
    for r, entry in enumerate(report["replicas"]):
        summary = entry["explanation"]
        end = entry["time_to_instability_ps"]
        rows = np.flatnonzero((recorded.replica == r) & (recorded.time_ps < (np.inf if end is None else end)))
        assert summary["n_records"] == len(rows) and summary["first"]["time_ps"] == 0.0
        assert summary["last"]["time_ps"] == recorded.time_ps[rows[-1]]
        last = recorded.order_totals[rows[-1]]
        assert summary["change_eV"] == {str(n): last[n - 1] - recorded.order_totals[rows[0], n - 1] for n in (1, 2, 3)}
        assert summary["first"]["top_pair"]["relevance_eV"] == recorded.record_pairs(rows[0]).relevance[0]
