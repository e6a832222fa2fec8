"""Frames split over devices and processes (:mod:`jaxrel.parallel`): evaluation, training and
explanation on 4 devices, and on 2 processes of 2 devices, equal a one-device run.

JAX fixes its device count when it starts, so the runs on several devices are this file run
as a script in two subprocesses at once (``python tests/test_parallel.py K PORT FOLDER``) with
``XLA_FLAGS=--xla_force_host_platform_device_count=4``: alone, process 0 runs on 4 devices and
process 1 on 1; then they join one run (``jax.distributed`` over gloo on localhost) on 2 devices
each. The tests compare what they write. The model is a tiny untrained float64 SchNet, the data
18 Morse O–H–H frames: 12 train (batches of 6, padded to 8 on 4 devices), 3 validate (padded to
4), 6 are evaluated (padded to 8).
"""

import contextlib
import io
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrel.cli import main
from jaxrel.parallel import batch_mesh, initialize, pad_leading, padded_size

HERE = Path(__file__).resolve()
SHIFTS = {1: -4.0, 8: -6.0}


# the runs, done by this file as a script


def _workload(root: Path, mesh) -> dict:
    """Predictions and metrics on 6 frames and an ensemble of 2 seeds after 4 training steps
    (energies only, which compiles in half the time of a force loss), with ``mesh``: a flat
    dict of NumPy arrays."""
    from flax import nnx

    from helpers import morse_dimers, small_potential
    from jaxrel.data import read_frames
    from jaxrel.models import Potential
    from jaxrel.relevance import explain
    from jaxrel.train import TrainConfig, evaluate, labelled_graphs, predict_frames, train

    potential, params = small_potential()
    _, other = Potential.create(potential.config, SHIFTS, 0.5, seed=1)
    graph, targets = labelled_graphs(read_frames(morse_dimers(root / "morse.extxyz", n_frames=18)), 3.0, "float64")

    def frames(start, stop, forces=True):
        labels = targets if forces else targets._replace(forces=None)
        return jax.tree.map(lambda x: np.asarray(x)[start:stop], (graph, labels))

    energies, forces = predict_frames(potential, params, frames(12, 18)[0], mesh=mesh)
    out = {"energies": energies, "forces": forces}
    explanation = explain(potential, params, frames(12, 18)[0], max_order=2, mesh=mesh)
    out |= {f"explain/{n}": table.relevance for n, table in explanation.tables.items()}
    out["explain/frames"] = explanation.tables[2].frame
    out |= {f"initial/0/{i}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(nnx.to_pure_dict(params)))}
    out |= {f"metric/{k}": np.float64(v) for k, v in evaluate(potential, params, *frames(12, 18), mesh=mesh).items()}
    bests, histories = train(potential, [params, other], frames(0, 12, False), frames(12, 15, False),
                             TrainConfig(epochs=2, batch_size=6, learning_rate=1e-2, forces_weight=0.0),
                             progress=False, mesh=mesh)
    for k, (best, history) in enumerate(zip(bests, histories)):
        out |= {f"params/{k}/{i}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(nnx.to_pure_dict(best)))}
        out[f"validation_loss/{k}"] = np.asarray(history["validation_loss"])
    return out


def _cli_evaluate(root: Path, *options: str) -> dict:
    """``jaxrel evaluate`` of the tiny model on the 6 evaluated frames: the printed metrics."""
    from ase.io import read, write

    from helpers import small_potential
    from jaxrel.checkpoint import save_checkpoint

    save_checkpoint(root / "model", *small_potential())
    write(root / "eval.extxyz", read(root / "morse.extxyz", index="12:18"), format="extxyz")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["evaluate", "--model", str(root / "model"), "--data", str(root / "eval.extxyz"), *options])
    if code:
        raise SystemExit(f"jaxrel evaluate {' '.join(options)} exited with {code}")
    return {f"cli/{k}": np.float64(v) for k, v in json.loads(printed.getvalue())["test"].items()}


def _placement(mesh) -> dict:
    """How :func:`shard_leading`, :func:`replicate` and :func:`gather` place 6 items on a 4-device mesh."""
    from jaxrel.parallel import gather, replicate, shard_leading

    checks = {"refuses_6_over_4": np.array(False)}
    try:
        shard_leading(np.arange(6.0), mesh)
    except ValueError:
        checks["refuses_6_over_4"] = np.array(True)
    split = shard_leading(pad_leading(np.arange(6.0), padded_size(6, mesh)), mesh)
    checks["shard_sizes"] = np.array([s.data.shape[0] for s in split.addressable_shards])
    checks["shard_devices"] = np.array(len({s.device for s in split.addressable_shards}))
    checks["gathered"] = gather(split)
    checks["replica_sizes"] = np.array([s.data.shape[0] for s in replicate(np.arange(3.0), mesh).addressable_shards])
    return checks


def _run(root: Path, process_id: int, port: int) -> None:
    """Process ``process_id`` of 2, with 4 host devices. Alone first: process 0 runs the workload on
    4 devices and checks how arrays are placed, process 1 runs it on 1 device (``single<K>.npz``).
    Then both join one run (``jaxrel evaluate --processes 2 --devices 2``) and run the workload on
    the mesh over the first 2 devices of each (``process<K>.npz``)."""
    from helpers import morse_dimers

    folder = root / f"process{process_id}"
    folder.mkdir()
    morse_dimers(folder / "morse.extxyz", n_frames=18)
    n_devices = 4 if process_id == 0 else 1
    alone = _workload(folder, batch_mesh(n_devices)) | _cli_evaluate(folder, "--devices", str(n_devices))
    if process_id == 0:
        alone |= {f"check/{k}": v for k, v in _placement(batch_mesh(4)).items()}
    np.savez(root / f"single{process_id}.npz", **alone)
    joined = _cli_evaluate(folder, "--devices", "2", "--processes", "2", "--process-id", str(process_id),
                           "--coordinator", f"localhost:{port}")
    mesh = batch_mesh(2)
    joined |= _workload(folder, mesh) | {"mesh_devices": np.array(mesh.size), "devices": np.array(len(jax.devices()))}
    np.savez(root / f"process{process_id}.npz", **joined)


# the tests


def _script(root: Path, process_id: int, port: int) -> subprocess.Popen:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    return subprocess.Popen([sys.executable, str(HERE), str(process_id), str(port), str(root)], env=env,
                            cwd=HERE.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process: subprocess.Popen) -> str:
    """The end of the script's output (its exit code first)."""
    try:
        output, _ = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return f"exit code {process.returncode}:\n{output[-3000:]}"


def _results(path: Path) -> dict:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, list[str]]:
    """The two script processes, run at once on a free local port: their folder and outputs."""
    root = tmp_path_factory.mktemp("parallel")
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    processes = [_script(root, k, port) for k in range(2)]
    return root, [_finish(process) for process in processes]


@pytest.fixture(scope="module")
def alone(runs) -> SimpleNamespace:
    """The results of one process on 1 device and on 4 devices."""
    root, outputs = runs
    for k in range(2):
        assert (root / f"single{k}.npz").is_file(), f"process {k} failed before it joined the run, {outputs[k]}"
    return SimpleNamespace(one=_results(root / "single1.npz"), four=_results(root / "single0.npz"))


def _assert_same(got: dict, expected: dict, keys) -> None:
    keys = sorted(keys)
    assert keys, "nothing to compare"
    for key in keys:
        scale = np.abs(expected[key]).max(initial=0.0)
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-10, atol=1e-10 * scale + 1e-300, err_msg=key)


def test_shard_leading_splits_padded_frames_evenly_over_four_devices(alone):
    check = {k[6:]: v for k, v in alone.four.items() if k.startswith("check/")}
    assert check["refuses_6_over_4"]
    assert check["shard_sizes"].tolist() == [2, 2, 2, 2] and check["shard_devices"] == 4
    np.testing.assert_array_equal(check["gathered"], [0, 1, 2, 3, 4, 5, 5, 5])
    assert check["replica_sizes"].tolist() == [3, 3, 3, 3]


def test_evaluation_on_four_devices_equals_one_device(alone):
    """6 frames padded to 8 over 4 devices: the same predictions and metrics, from the library and
    from ``jaxrel evaluate --devices``."""
    one, four = alone.one, alone.four
    assert one["energies"].shape == (6,) and one["forces"].shape == (6, 3, 3)
    _assert_same(four, one, [k for k in one if k.startswith(("energies", "forces", "metric/", "cli/"))])
    assert one["metric/n_frames"] == 6 and one["cli/n_frames"] == 6
    _assert_same({k[4:]: v for k, v in one.items() if k.startswith("cli/")},
                 {k[7:]: v for k, v in one.items() if k.startswith("metric/")}, ["forces_mae_meV_per_A"])


def test_explanations_on_four_devices_equal_one_device(alone):
    """6 frames of one size class in one vmapped walk-chain call, padded to 8 over 4 devices: the same
    1- and 2-body terms, frame by frame (the two-process test compares them too)."""
    one, four = alone.one, alone.four
    assert one["explain/frames"].tolist() == sorted(one["explain/frames"].tolist()) and len(set(one["explain/frames"])) == 6
    assert np.abs(one["explain/2"]).max() > 1e-6
    _assert_same(four, one, [k for k in one if k.startswith("explain/")])


def test_training_steps_on_four_devices_equal_one_device(alone):
    """Two seeds × 4 steps of batches of 6 frames (padded to 8 with weight 0 on 4 devices) and
    the validation losses of 3 frames (padded to 4)."""
    one, four = alone.one, alone.four
    params = [k for k in one if k.startswith(("params/", "validation_loss/"))]
    _assert_same(four, one, params)
    # the steps moved the params: a comparison of untrained params would prove nothing
    assert max(np.abs(one[k] - one["initial" + k[6:]]).max() for k in one if k.startswith("params/0/")) > 1e-3


def test_two_processes_of_two_devices_equal_one_device(runs, alone):
    """``jaxrel evaluate --processes 2 --devices 2`` and the library on a mesh over 2 devices of each
    process: every process gets the one-device predictions, metrics and trained params."""
    root, outputs = runs
    for k in range(2):
        assert (root / f"process{k}.npz").is_file(), f"process {k} failed in the joined run, {outputs[k]}"
        got = _results(root / f"process{k}.npz")
        assert got["devices"] == 8 and got["mesh_devices"] == 4
        _assert_same(got, alone.one, alone.one.keys())


def test_pad_leading_repeats_the_last_item_up_to_the_size():
    tree = {"a": np.arange(6.0).reshape(3, 2), "b": jnp.arange(3)}
    padded = pad_leading(tree, 5)
    np.testing.assert_array_equal(padded["a"], [[0, 1], [2, 3], [4, 5], [4, 5], [4, 5]])
    np.testing.assert_array_equal(padded["b"], [0, 1, 2, 2, 2])
    assert isinstance(padded["b"], jax.Array)
    assert pad_leading(tree, 3)["a"] is tree["a"]
    assert [padded_size(n, SimpleNamespace(size=4)) for n in (1, 4, 6, 8)] == [4, 4, 8, 8]


def test_batch_mesh_rejects_device_counts_this_process_lacks():
    n = len(jax.local_devices())
    assert batch_mesh().size == n == batch_mesh(n).size
    for bad in (0, n + 1):
        with pytest.raises(ValueError, match=f"--devices is {bad}, but .* give 1 to {n}"):
            batch_mesh(bad)


@pytest.mark.parametrize("options, message", [
    (["--devices", "0"], "--devices is 0"),
    (["--processes", "0"], r"processes \(--processes\) is 0"),
    (["--processes", "2", "--process-id", "2", "--coordinator", "h:1"], r"process_id \(--process-id\) is 2"),
    (["--processes", "2"], r"coordinator \(--coordinator\) is missing"),
    (["--processes", "2", "--coordinator", "node0"], r"coordinator \(--coordinator\) is 'node0'; give HOST:PORT"),
])
def test_cli_rejects_bad_device_options_in_one_sentence(tmp_path, capsys, options, message):
    data = str(tmp_path / "d.xyz")
    for command in (["evaluate", "--model", str(tmp_path / "m"), "--data", data],
                    ["train", "--data", data, "--epochs", "1", "--out", str(tmp_path / "run")]):
        assert main([*command, *options]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and err.startswith(f"jaxrel {command[0]}: error: ") and re.search(message, err)
    assert not jax.distributed.is_initialized()


def test_initialize_for_one_process_joins_nothing():
    initialize(1, 0)
    assert not jax.distributed.is_initialized() and jax.process_count() == 1


if __name__ == "__main__":
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_disable_most_optimizations", True)    # as in conftest: tiny models, compile time
    _run(Path(sys.argv[3]), int(sys.argv[1]), int(sys.argv[2]))
