"""Training, checkpoints and the train/evaluate command line.

Data: the session's 40-frame Morse-dimer file (fixture ``dimers`` in conftest).
"""

import json

import ase
import ase.io
import jax
import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator
from flax import nnx

from helpers import small_potential
from jaxrel.checkpoint import load_checkpoint, save_checkpoint
from jaxrel.cli import main
from jaxrel.data import read_frames
from jaxrel.train import TrainConfig, evaluate, labelled_graphs, train


def test_training_lowers_the_validation_loss_and_keeps_the_best_params(dimers):
    frames = read_frames(dimers)
    pot, params = small_potential(n_features=16)
    data = labelled_graphs(frames.select(slice(0, 32)), 3.0, "float64")
    val = labelled_graphs(frames.select(slice(32, 40)), 3.0, "float64")
    before = evaluate(pot, params, *val)
    best, history = train(pot, params, data, val, TrainConfig(epochs=15, batch_size=8, learning_rate=1e-2), progress=False)
    after = evaluate(pot, best, *val)
    assert after["forces_mae_meV_per_A"] < 0.5 * before["forces_mae_meV_per_A"]
    assert history["best_validation_loss"] == min(history["validation_loss"])
    # per-species shifts and the energy scale are fixed, not trained
    np.testing.assert_array_equal(best["shifts"][...], params["shifts"][...])


def test_force_matching_trains_without_energies(dimers):
    frames = read_frames(dimers)
    pot, params = small_potential()
    graph, targets = labelled_graphs(frames, 3.0, "float64")
    targets = targets._replace(energies=None)
    best, _ = train(pot, params, (graph, targets), (graph, targets),
                    TrainConfig(epochs=3, batch_size=8, energy_weight=0.0), progress=False)
    metrics = evaluate(pot, best, graph, targets)
    assert metrics["energy_mae_meV"] is None and metrics["forces_mae_meV_per_A"] > 0


def test_checkpoint_round_trip_is_bit_identical(tmp_path, dimers):
    pot, params = small_potential("float32", model="painn")
    save_checkpoint(tmp_path / "model", pot, params, metadata={"note": "x"})
    pot2, params2, meta = load_checkpoint(tmp_path / "model")
    assert pot2.config == pot.config and meta == {"note": "x"}
    for a, b in zip(jax.tree.leaves(nnx.to_pure_dict(params)), jax.tree.leaves(nnx.to_pure_dict(params2))):
        assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))
    graph, _ = labelled_graphs(read_frames(dimers), 3.0, "float32")
    np.testing.assert_array_equal(pot.energy(params, graph), pot2.energy(params2, graph))


def test_missing_or_corrupt_checkpoints_raise_clear_errors(tmp_path):
    pot, params = small_potential()
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        load_checkpoint(tmp_path / "nowhere")
    save_checkpoint(tmp_path / "m", pot, params)
    blob = (tmp_path / "m" / "params.msgpack").read_bytes()
    (tmp_path / "m" / "params.msgpack").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="params.msgpack is corrupt"):
        load_checkpoint(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is corrupt"):
        load_checkpoint(tmp_path / "m")


def test_cli_train_then_evaluate_writes_metrics_json(tmp_path, dimers, capsys):
    out = tmp_path / "run"
    code = main(["train", "--data", str(dimers), "--model", "painn", "--cutoff", "3", "--features", "8",
                 "--interactions", "1", "--rbf", "6", "--epochs", "2", "--batch-size", "4",
                 "--quiet", "--out", str(out)])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["test"]) >= {"energy_mae_meV", "forces_mae_meV_per_A", "n_frames"}
    assert metrics["test"]["n_frames"] == 40 - 32 - 2
    capsys.readouterr()
    assert main(["evaluate", "--model", str(out / "model"), "--data", str(dimers)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["test"]["n_frames"] == 40 and printed["test"]["forces_mae_meV_per_A"] > 0


def test_cli_reports_an_empty_data_file_in_one_line(tmp_path, capsys):
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    assert main(["train", "--data", str(empty), "--epochs", "1", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "empty.npz" in err and "\n" not in err


def test_cli_evaluate_rejects_species_the_model_never_saw(tmp_path, dimers, capsys):
    pot, params = small_potential("float32")
    save_checkpoint(tmp_path / "m", pot, params)
    atoms = ase.Atoms("OHC", positions=[[0, 0, 0], [1.0, 0, 0], [0, 1.1, 0]])
    atoms.calc = SinglePointCalculator(atoms, energy=-1.0, forces=np.zeros((3, 3)))
    ase.io.write(tmp_path / "c.extxyz", [atoms], format="extxyz")
    assert main(["evaluate", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "c.extxyz")]) == 2
    assert "atom 2 has species 6, which the model was not trained on (known: 1, 8)" in capsys.readouterr().err


def test_an_ensemble_member_equals_the_single_model_trained_from_the_same_seed(tmp_path, dimers, capsys):
    """The ensemble is trained through the command line (``--seeds``), the single model through the library."""
    from jaxrel.checkpoint import load_models
    from jaxrel.train import train_potential

    assert main(["train", "--data", str(dimers), "--features", "8", "--interactions", "1", "--epochs", "1",
                 "--dtype", "float64", "--seeds", "2", "--seed", "0", "--quiet", "--out", str(tmp_path / "ens")]) == 0
    assert json.loads(capsys.readouterr().out)["seeds"] == [0, 1]
    listing = json.loads((tmp_path / "ens" / "ensemble.json").read_text())
    assert listing["members"] == ["model_seed0", "model_seed1"] and listing["seeds"] == [0, 1]
    ensemble = json.loads((tmp_path / "ens" / "metrics.json").read_text())
    single = train_potential(dimers, tmp_path / "one", model="schnet", n_features=8, n_interactions=1, epochs=1,
                             dtype="float64", progress=False)
    members = load_models(tmp_path / "ens")
    assert [m[2]["seed"] for m in members] == [0, 1] == ensemble["seeds"]
    (_, only, _), = load_models(tmp_path / "one" / "model")
    for a, b in zip(jax.tree.leaves(nnx.to_pure_dict(members[0][1])), jax.tree.leaves(nnx.to_pure_dict(only))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-12)
    assert ensemble["members"]["0"]["test"]["forces_mae_meV_per_A"] == pytest.approx(
        single["test"]["forces_mae_meV_per_A"], rel=1e-8)
    first = jax.tree.leaves(nnx.to_pure_dict(members[0][1]))
    assert any(not np.allclose(a, b) for a, b in zip(first, jax.tree.leaves(nnx.to_pure_dict(members[1][1]))))
    spread = ensemble["test_std"]["forces_mae_meV_per_A"]
    assert spread > 0 and ensemble["test_mean"]["forces_mae_meV_per_A"] > 0
    assert main(["train", "--data", str(dimers), "--epochs", "1", "--seeds", "0", "--out", str(tmp_path / "z")]) == 2
    assert "seeds (--seeds) is 0" in capsys.readouterr().err


