"""Bad and unusual input through the command line: every case ends in one clear line on
stderr and exit code 2 (130 for an interruption), and no earlier file changes.

Classes (the README's table counts the cases of each): data files, labels, options, output
paths, checkpoints, species, interruption, strict JSON. Each test runs ``jaxrel.cli.main``
in-process, as a user's shell would run ``jaxrel``.
"""

import json
import math
from pathlib import Path

import ase.io
import numpy as np
import pytest

from jaxrel.cli import main
from jaxrel.data.readers import KCAL_PER_MOL_IN_EV


def snapshot(root: Path) -> dict:
    """Every file under ``root`` with its bytes."""
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def run_fails(argv, capsys, code=2) -> str:
    """Run ``jaxrel argv``; assert the exit code and one stderr line; return that line."""
    assert main([str(a) for a in argv]) == code
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"jaxrel {argv[0]}: "), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, model_and_data, dimers):
    """Files a user has: a model, its data, an rMD17-layout npz, an explanation and a run."""
    root = tmp_path_factory.mktemp("user")
    model, data = model_and_data
    frames = ase.io.read(dimers, index=":")
    npz = root / "dimers.npz"
    np.savez(npz, nuclear_charges=frames[0].numbers, coords=np.stack([a.positions for a in frames]),
             energies=np.array([a.get_potential_energy() for a in frames]) / KCAL_PER_MOL_IN_EV,
             forces=np.stack([a.get_forces() for a in frames]) / KCAL_PER_MOL_IN_EV)
    explained = root / "explained"
    assert main(["explain", "--model", str(model), "--data", str(data), "--frames", "0", "--order", "2",
                 "--quiet", "--out", str(explained)]) == 0
    return {"model": model, "data": data, "npz": npz, "extxyz": dimers, "explained": explained, "root": root}


def bad_npz(path: Path, source: Path, **changes) -> Path:
    with np.load(source) as f:
        arrays = dict(f)
    for key, change in changes.items():
        arrays[key] = change(arrays[key].copy())
    np.savez(path, **arrays)
    return path


def _set(index, value):
    def change(x):
        x[index] = value
        return x
    return change


# ---------------------------------------------------------------- data files and labels

BAD_DATA = {
    "missing": (lambda w, d: d / "nowhere.npz", "does not exist"),
    "folder": (lambda w, d: d, "is a folder"),
    "text named .npz": (lambda w, d: _write(d / "notes.npz", b"positions in a text file\n"), "not an npz"),
    "truncated npz": (lambda w, d: _write(d / "cut.npz", w["npz"].read_bytes()[:700]), "npz"),
    "empty": (lambda w, d: _write(d / "empty.npz", b""), "is empty"),
    "nan energy": (lambda w, d: bad_npz(d / "e.npz", w["npz"], energies=_set(3, np.nan)), "frame 3"),
    "inf force": (lambda w, d: bad_npz(d / "f.npz", w["npz"], forces=_set((5, 1, 2), np.inf)), "frame 5"),
    "nan position": (lambda w, d: bad_npz(d / "p.npz", w["npz"], coords=_set((2, 0, 0), np.nan)), "frame 2"),
    "species as unknown symbols": (lambda w, d: bad_npz(d / "s.npz", w["npz"],
                                                        nuclear_charges=lambda z: np.array(["Xx", "H", "H"])), "Xx"),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _data_commands(w, data, out):
    return {"train": ["train", "--data", data, "--epochs", "1", "--quiet", "--out", out],
            "evaluate": ["evaluate", "--model", w["model"], "--data", data],
            "explain": ["explain", "--model", w["model"], "--data", data, "--order", "2", "--quiet", "--out", out],
            "audit": ["audit", "--model", w["model"], "--data", data, "--quiet", "--out", out],
            "md": ["md", "--model", w["model"], "--data", data, "--quiet", "--out", out],
            "report": ["report", "--explained", w["explained"], "--data", data, "--out", out]}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data_files_and_labels_get_one_line_errors_in_every_command(workspace, tmp_path, capsys, case):
    make, message = BAD_DATA[case]
    data = make(workspace, tmp_path)
    before = snapshot(workspace["root"])
    for command, argv in _data_commands(workspace, data, tmp_path / "out").items():
        line = run_fails(argv, capsys)
        assert message in line, (command, line)
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir()), command
    assert snapshot(workspace["root"]) == before


def test_training_on_data_without_the_labels_the_loss_needs_is_refused(workspace, tmp_path, capsys):
    frames = ase.io.read(workspace["extxyz"], index=":")
    for atoms in frames:
        atoms.calc.results.pop("energy")
    no_energy = tmp_path / "forces_only.extxyz"
    ase.io.write(no_energy, frames)
    line = run_fails(["train", "--data", no_energy, "--epochs", "1", "--out", tmp_path / "run"], capsys)
    assert "has no energies but --energy-weight is 0.05" in line and "--energy-weight 0" in line


# ---------------------------------------------------------------- options

BAD_OPTIONS = [
    (["train", "--epochs", "1", "--lr", "0"], "learning_rate (--lr) is 0.0"),
    (["train", "--epochs", "1", "--lr=-1e-3"], "learning_rate (--lr) is -0.001"),
    (["train", "--epochs", "1", "--energy-weight", "0", "--forces-weight", "0"], "both loss weights"),
    (["train", "--epochs", "1", "--forces-weight", "-0.5"], "forces_weight (--forces-weight) is -0.5"),
    (["train", "--epochs", "0"], "epochs (--epochs) is 0"),
    (["train", "--minutes", "-1"], "minutes (--minutes) is -1.0"),
    (["train", "--epochs", "1", "--batch-size", "0"], "batch_size (--batch-size) is 0"),
    (["train", "--epochs", "1", "--cutoff", "nan"], "cutoff (--cutoff) is nan"),
    (["train", "--epochs", "1", "--cutoff", "-2"], "cutoff (--cutoff) is -2.0"),
    (["train", "--epochs", "1", "--interactions", "0"], "n_interactions (--interactions) is 0"),
    (["train", "--epochs", "1", "--rbf", "1"], "n_rbf (--rbf) is 1"),
    (["train", "--epochs", "1", "--model", "nequip", "--lmax", "-1"], "lmax (--lmax) is -1"),
    (["train", "--epochs", "1", "--seeds", "0"], "seeds (--seeds) is 0"),
    (["train", "--epochs", "1", "--train", "-1"], "n_train = -1 is negative"),
    (["explain", "--order", "0"], "max_order (--order) must be between 1 and"),
    (["explain", "--rule", "lrp-gamma", "--gamma", "nan"], "gamma (--gamma) is nan"),
    (["explain", "--rule", "lrp-eps", "--epsilon", "-1"], "epsilon (--epsilon) is -1.0"),
    (["explain", "--frames", "7:9"], "--frames '7:9' selects no frame"),
    (["audit", "--rules", "lrp-z"], "unknown rule 'lrp-z'"),
    (["audit", "--order", "9"], "max_order must be between 1 and 4"),
    (["generate", "noble-gas", "--temperature", "-5", "--frames", "2"], "--temperature -5.0 K must be a positive"),
    (["generate", "noble-gas", "--temperature", "0", "--frames", "2"], "--temperature 0.0 K must be a positive"),
    (["generate", "noble-gas", "--frames", "0"], "--frames 0"),
    (["generate", "noble-gas", "--atoms", "0"], "--atoms 0"),
    (["quickstart", "--minutes", "0"], "--minutes is 0.0"),
    (["quickstart", "--frames", "5"], "--frames is 5"),
    (["quickstart", "--explain-frames", "0"], "--explain-frames is 0"),
    (["md", "--frame", "99"], "--frame 99 is not a frame"),
    (["md", "--temperature", "-1"], "-1"),
    (["md", "--dt", "0"], "--dt"),
    (["md", "--replicas", "0"], "--replicas is 0"),
]


@pytest.mark.parametrize("argv, message", BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_nonsense_settings_are_refused_in_one_line_before_anything_is_written(workspace, tmp_path, capsys,
                                                                             argv, message):
    command = argv[0]
    data = workspace["extxyz"] if command == "train" else workspace["data"]
    extra = {"train": ["--data", data, "--quiet"], "explain": ["--model", workspace["model"], "--data", data],
             "audit": ["--model", workspace["model"], "--data", data],
             "md": ["--model", workspace["model"], "--data", data]}.get(command, [])
    out = tmp_path / ("out.npz" if command == "generate" else "out")
    line = run_fails([*argv, *extra, "--out", out], capsys)
    assert message in line
    assert not out.exists() or not any(out.iterdir())


# ---------------------------------------------------------------- output paths

def _writing_commands(w, out):
    return {"train": ["train", "--data", w["extxyz"], "--epochs", "1", "--quiet", "--out", out],
            "explain": ["explain", "--model", w["model"], "--data", w["data"], "--order", "2", "--quiet", "--out", out],
            "audit": ["audit", "--model", w["model"], "--data", w["data"], "--quiet", "--out", out],
            "md": ["md", "--model", w["model"], "--data", w["data"], "--time", "0.001", "--quiet", "--out", out],
            "report": ["report", "--explained", w["explained"], "--out", out],
            "quickstart": ["quickstart", "--out", out]}


EARLIER_RUN = {"train": "metrics.json", "explain": "summary.json", "audit": "audit.json", "md": "thermo.csv",
               "report": "report.html", "quickstart": "argon.npz"}


@pytest.mark.parametrize("command", list(EARLIER_RUN))
def test_an_earlier_run_is_refused_and_left_unchanged(workspace, tmp_path, capsys, command):
    out = tmp_path / "run"
    out.mkdir()
    (out / EARLIER_RUN[command]).write_text("a week of work\n")
    (out / "my_notes.txt").write_text("keep me\n")
    before = snapshot(tmp_path)
    line = run_fails(_writing_commands(workspace, out)[command], capsys)
    assert "already holds an earlier run" in line and "--overwrite" in line
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("command", ["train", "explain", "audit", "md", "report", "quickstart"])
def test_an_output_folder_that_is_a_file_is_refused_before_any_computation(workspace, tmp_path, capsys, command):
    out = tmp_path / "a_file"
    out.write_text("not a folder\n")
    line = run_fails(_writing_commands(workspace, out)[command], capsys)
    assert "is a file" in line
    assert out.read_text() == "not a folder\n"


def test_an_output_under_a_file_is_refused_before_any_computation(workspace, tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    line = run_fails(_writing_commands(workspace, tmp_path / "f" / "run")["explain"], capsys)
    assert "cannot be created" in line


def test_generate_refuses_an_existing_file_and_a_name_without_npz(tmp_path, capsys):
    out = tmp_path / "argon.npz"
    out.write_bytes(b"earlier data")
    line = run_fails(["generate", "noble-gas", "--frames", "2", "--quiet", "--out", out], capsys)
    assert "already exists" in line and out.read_bytes() == b"earlier data"
    line = run_fails(["generate", "noble-gas", "--frames", "2", "--quiet", "--out", tmp_path / "argon.dat"], capsys)
    assert "must end in .npz" in line


def test_overwrite_removes_every_file_of_the_earlier_run_and_nothing_else(workspace, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "seed7").mkdir()          # a stale member of an earlier ensemble explanation
    (out / "seed7" / "summary.json").write_text("{}")
    (out / "report.html").write_text("the earlier explanation's report")
    (out / "my_notes.txt").write_text("keep me\n")
    argv = [*_writing_commands(workspace, out)["explain"], "--frames", "0", "--overwrite"]
    assert main([str(a) for a in argv]) == 0
    assert "removing the earlier run's report.html, seed7" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["my_notes.txt", "nbody.npz", "summary.json"]


# ---------------------------------------------------------------- checkpoints

def _checkpoint_cases(model: Path, tmp: Path) -> dict:
    import shutil

    def copy(name):
        shutil.copytree(model, tmp / name)
        return tmp / name

    cases = {"missing": (tmp / "no_model", "config.json is missing")}
    c = copy("config")
    (c / "config.json").write_text("{ not json")
    cases["corrupt config.json"] = (c, "config.json is corrupt")
    c = copy("truncated")
    (c / "params.msgpack").write_bytes((c / "params.msgpack").read_bytes()[:100])
    cases["truncated params"] = (c, "params.msgpack is corrupt")
    c = copy("mixed")
    data = bytearray((c / "params.msgpack").read_bytes())
    data[-1] ^= 1                     # one flipped bit: still a valid msgpack, not this model's
    (c / "params.msgpack").write_bytes(bytes(data))
    cases["params of another run"] = (c, "not the file config.json was written with")
    c = tmp / "ensemble"
    c.mkdir()
    (c / "ensemble.json").write_text('{"members": ["model_seed0"]}')
    cases["corrupt ensemble.json"] = (c, "ensemble.json is corrupt")
    return cases


def test_missing_or_corrupt_checkpoints_get_one_line_errors_in_every_command(workspace, tmp_path, capsys):
    cases = _checkpoint_cases(workspace["model"], tmp_path)
    for name, (model, message) in cases.items():
        w = {**workspace, "model": model}
        commands = ("explain", "audit") if "ensemble" in name else ("evaluate", "explain", "audit", "md")
        for command in commands:
            line = run_fails(_data_commands(w, workspace["data"], tmp_path / "out")[command], capsys)
            assert message in line, (name, command, line)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- species

def with_species(source: Path, numbers: list[int], path: Path) -> Path:
    """The frames of ``source`` with their atoms renamed to ``numbers``, written to ``path``."""
    frames = ase.io.read(source, index=":")
    for atoms in frames:
        atoms.numbers = numbers
    ase.io.write(path, frames)
    return path


def test_data_with_species_the_model_does_not_know_is_refused_everywhere(workspace, tmp_path, capsys):
    carbon = with_species(workspace["data"], [8, 1, 6], tmp_path / "carbon.extxyz")   # C: not in the H/O model
    for command, argv in _data_commands(workspace, carbon, tmp_path / "out").items():
        if command == "train":
            continue
        line = run_fails(argv, capsys)
        assert "6" in line and ("not trained on" in line or "species" in line), (command, line)


def test_report_data_of_another_system_is_refused(workspace, tmp_path, capsys):
    other = with_species(workspace["data"], [8, 8, 1], tmp_path / "other.extxyz")
    line = run_fails(["report", "--explained", workspace["explained"], "--data", other, "--out", tmp_path / "r"],
                     capsys)
    assert "give the data that was explained" in line


def test_test_data_with_species_absent_from_training_is_refused(workspace, tmp_path, capsys):
    test = with_species(workspace["extxyz"], [8, 1, 6], tmp_path / "test.extxyz")
    line = run_fails(["train", "--data", workspace["extxyz"], "--test-data", test, "--epochs", "1",
                      "--out", tmp_path / "run"], capsys)
    assert "species [6]" in line and "lacks" in line


# ---------------------------------------------------------------- interruption and strict JSON

def test_ctrl_c_during_force_matching_with_a_prior_keeps_a_usable_best_model_and_its_metrics(workspace, tmp_path,
                                                                                           capsys, monkeypatch):
    import jaxrel.train as train_module

    frames = ase.io.read(workspace["extxyz"], index=":")
    for atoms in frames:
        atoms.calc.results.pop("energy")            # forces only: coarse-grained force matching
    data = tmp_path / "forces_only.extxyz"
    ase.io.write(data, frames)
    real = train_module.save_checkpoint
    calls = []

    def interrupt_after_second_save(*args, **kwargs):
        result = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:              # best of epoch 2 saved: the user presses Ctrl-C
            raise KeyboardInterrupt
        return result

    monkeypatch.setattr(train_module, "save_checkpoint", interrupt_after_second_save)
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--energy-weight", "0", "--prior", "repulsive", "--features", "8",
                 "--interactions", "1", "--epochs", "50", "--lr", "1e-3", "--quiet", "--out", str(out)]) == 130
    captured = capsys.readouterr()
    assert captured.err.strip().startswith("jaxrel train: interrupted at epoch")
    metrics = json.loads((out / "metrics.json").read_text(), parse_constant=_no_nan)
    training = metrics["training"]
    assert training["interrupted"] is True and training["epochs"] == training["best_epoch"] < 50
    assert metrics["test"]["energy_mae_meV"] is None and metrics["test"]["forces_mae_meV_per_A"] > 0
    config = json.loads((out / "model" / "config.json").read_text(), parse_constant=_no_nan)
    assert metrics["params_sha256"] == config["params_sha256"]
    assert config["metadata"]["metrics"]["test"] == metrics["test"]
    assert config["model"]["prior"] == "repulsive" and config["metadata"]["run"]["training"]["prior"] == "repulsive"
    assert main(["evaluate", "--model", str(out / "model"), "--data", str(data)]) == 0
    assert math.isfinite(json.loads(capsys.readouterr().out)["test"]["forces_mae_meV_per_A"])


def _no_nan(token):
    raise ValueError(f"{token} in JSON")


def test_json_files_are_strict_with_null_for_undefined_values(tmp_path):
    from jaxrel.files import write_json

    path = write_json(tmp_path / "m.json", {"mae": float("nan"), "rmse": [np.inf, np.float32(1.5)], (1, 8): None})
    assert json.loads(path.read_text(), parse_constant=_no_nan) == {"mae": None, "rmse": [None, 1.5], "1-8": None}
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_float64_model_is_refused_while_jax_runs_in_float32_instead_of_silently_becoming_float32():
    import jax

    from jaxrel.models import ModelConfig, Potential

    with jax.enable_x64(False):
        with pytest.raises(ValueError, match="the model is float64 but JAX runs in float32"):
            Potential.create(ModelConfig("schnet", (1, 8), n_features=8, n_interactions=1, dtype="float64"))
