"""The benchmark set for one GPU in one command: training, decomposition and MD speed.

Sections, run in this order, each timed (``section_seconds``, compilation included):

* ``training``: frames/s of :func:`jaxrel.train.train` for SchNet and PaiNN (64 features,
  3 interactions, 5 Å, 20 RBFs, batch 8, as benchmarks/train_rmd17.py) on rMD17 ethanol,
  950 training / 50 validation frames of rmd17_ethanol_train_01 ($JAXREL_DATA or
  ../shared/data). ``train`` compiles its step anew at every call, so the suite keeps a
  persistent compilation cache in a temporary folder and calls it three times: once to
  compile (``compile_seconds``), once for one epoch and once for as long as the budget
  allows; frames/s after compilation is the difference of the last two (steps × batch /
  seconds; it includes the per-epoch validation, as the frames/s of train_rmd17 does).
* ``decomposition``: seconds of the full 1–3-body :func:`jaxrel.relevance.nbody_decomposition`
  and of all walk relevances (:func:`~jaxrel.relevance.all_walk_relevances`), GI rule, each the
  best of up to ``--repeats``
  calls after a compiling one, beside one jitted energy + forces evaluation of the same
  model (best of 20) and as a ratio to it. Frames: the published GNN-LRP frame
  (benchmarks/relevance_speed.py ``reference_frame``, 125 CG-methane beads) with SchNet
  128 features × 3 interactions, 5 Å; water 64 (water_dft/water64_dft.npz frame 0,
  192 atoms, periodic) with SchNet 32 × 2, 5 Å, up to 3-body terms. Random weights: the
  cost does not depend on them.
* ``md``: steps/s of :func:`jaxrel.md.simulate` (NVE velocity Verlet, 0.5 fs, through
  benchmarks/md_throughput.py ``jax_md_run``; compilation excluded) for ethanol (9 atoms),
  water64 (192) and argon1000 (1000) from md_throughput.py ``systems``, SchNet and PaiNN of
  the md_throughput size (64 × 3, 5 Å), R = 1 and 8 replicas vmapped in one run. The models
  are untrained, so the runs use md_throughput's heavy masses (× ``UNTRAINED_MASS_FACTOR``,
  see its docstring); a step costs the same at any mass.

Budget: ``--budget-minutes`` (default 8) is shared among the sections in proportion to
their weights (training 0.3, decomposition 0.25, md 0.45; what a section leaves over goes
to the later ones). Training shrinks its timed run, the decomposition its repeats, MD its
step counts (from the energy + forces time, then from the measured rate of the previous
replica count) down to a minimum; an MD entry is skipped once the whole budget is spent.
Compilation is not shrinkable and counts against the budget.

    python benchmarks/gpu_suite.py [--budget-minutes 8] [--quick] [--float64]
        [--sections training decomposition md] [--repeats 3]

``--quick`` is a CPU smoke run (200 training frames and 25 s per training model, 5–50 MD
steps with R = 1 and 2, one repeat). The
models are float32 unless ``--float64``. Writes benchmarks/results/gpu_suite_<backend>.json
(``gpu_suite_<backend>_float64.json`` with ``--float64``). On this project's machines no GPU
has been available so far: benchmarks/results/gpu_suite_cpu.json is the ``--quick`` smoke
run on the 2-core CPU, not a GPU figure.

Reading the JSON: ``machine`` (from train_rmd17.py), ``device_kind``, ``device_count``,
``jax``, ``backend``, ``date`` name the run; ``settings`` the dtype, budget and mode.
``training.<model>.frames_per_second`` is the training speed after compilation;
``decomposition.<frame>.{nbody_decomposition, walk_relevance}.ratio_to_energy_and_forces``
are the decomposition costs in energy + forces evaluations; ``md`` is a list of runs with
``steps_per_second`` (replicas advance together, one step each) and
``replica_steps_per_second`` = steps/s × R. ``errors`` lists the entries that failed (the
suite goes on without them and exits with status 1).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import jax
import numpy as np

from jaxrel.data import fit_species_energies, read_frames
from jaxrel.files import write_json
from jaxrel.graph import build_graphs
from jaxrel.models import ModelConfig, Potential
from jaxrel.relevance import all_walk_relevances, nbody_decomposition
from jaxrel.train import TrainConfig, labelled_graphs, train, training_split

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = {"training": 0.3, "decomposition": 0.25, "md": 0.45}
"""Section → weight of its share of the budget."""
TRAIN_MODELS = ("schnet", "painn")
MD_MODELS = ("schnet", "painn")
MD_BLOCK = 250
"""Steps per jitted block of md_throughput's ``jax_md_run`` (log_every = min(n_steps, 250)):
longer runs take whole blocks, so one compiled block serves the whole run."""
MD_STEPS = {"full": {"ethanol": 5000, "water64": 2000, "argon1000": 1000},
            "quick": {"ethanol": 50, "water64": 10, "argon1000": 5}}
"""Largest MD step count per system; the budget may shrink it."""
MD_MIN_STEPS = {"full": 50, "quick": 5}
QUICK_TRAIN_SECONDS = 25.0
"""With ``--quick``: seconds per model for the training section, compilation included."""

from md_stability import data_dir  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from md_throughput import UNTRAINED_MASS_FACTOR, atoms_of, jax_md_run, systems  # noqa: E402
from relevance_speed import CHUNK, best_of, reference_frame  # noqa: E402
from train_rmd17 import machine  # noqa: E402


class Budget:
    """The suite's wall-clock budget, shared out among sections in proportion to their weights."""

    def __init__(self, minutes: float, weights: dict[str, float]):
        self.end = time.perf_counter() + 60.0 * minutes
        self.weights = dict(weights)

    def left(self) -> float:
        """Seconds left of the whole budget (≥ 0)."""
        return max(self.end - time.perf_counter(), 0.0)

    def section(self, name: str) -> float:
        """Start section ``name``: its deadline (``time.perf_counter`` seconds), its weight's
        share of the time left among the sections not yet started."""
        share = self.weights[name] / sum(self.weights.values())
        del self.weights[name]
        return time.perf_counter() + self.left() * share


def share(deadline: float, n_left: int) -> float:
    """Seconds for the next of ``n_left`` entries before ``deadline`` (≥ 0)."""
    return max(deadline - time.perf_counter(), 0.0) / max(n_left, 1)


def guarded(errors: list, label: str, fn):
    """``fn()``, or None with the error recorded in ``errors`` when it raises."""
    try:
        return fn()
    except Exception as error:  # one failed entry must not cost the rest of the device time
        traceback.print_exc()
        errors.append({"entry": label, "error": f"{type(error).__name__}: {error}"})
        return None


def training_speed(model: str, data: tuple, dtype: str, seconds: float, quick: bool) -> dict:
    """Training frames/s of ``model`` after compilation, the three calls of the module docstring
    taking about ``seconds`` together (the timed one at least 10 s, or 20 s without ``quick``)."""
    frames, train_data, validation_data = data
    config = ModelConfig(model, tuple(sorted(set(frames.species.tolist()))), cutoff=5.0, n_features=64,
                         n_interactions=3, n_rbf=20, dtype=dtype)
    potential, params = Potential.create(config, species_energies=fit_species_energies(frames), seed=0)
    deadline = time.perf_counter() + seconds
    optimiser = dict(batch_size=8, learning_rate=1e-3, energy_weight=0.01, forces_weight=0.99)

    def history(**stop) -> dict:
        return train(potential, params, train_data, validation_data, TrainConfig(**stop, **optimiser),
                     progress=False)[1]

    tic = time.perf_counter()
    history(epochs=1)          # compiles the step and validation into the persistent cache
    compile_seconds = time.perf_counter() - tic
    one = history(epochs=1)
    timed = history(minutes=max(deadline - time.perf_counter(), 10.0 if quick else 20.0) / 60.0)
    steps, wall = timed["steps"] - one["steps"], timed["seconds"] - one["seconds"]
    return {"model": config.to_dict(), "batch_size": optimiser["batch_size"],
            "n_train": int(train_data[0].positions.shape[0]),
            "n_validation": int(validation_data[0].positions.shape[0]),
            "compile_seconds": compile_seconds, "steps_after_compilation": steps,
            "seconds_after_compilation": wall,
            "frames_per_second": steps * optimiser["batch_size"] / wall if steps > 0 else None,
            "final_train_loss": timed["train_loss"][-1],
            "timing": "difference of a one-epoch call and a longer call of jaxrel.train.train, both "
                      "loading the compiled step from the cache; includes the per-epoch validation"}


def training_section(args, deadline: float, errors: list) -> dict:
    frames = read_frames(data_dir() / "rmd17" / "rmd17_ethanol_train_01.npz")
    n_train, n_validation = (200, 8) if args.quick else (950, 50)
    split = training_split(len(frames), n_train, n_validation, separate_test=True)
    data = (frames.select(split.train), labelled_graphs(frames.select(split.train), 5.0, args.dtype),
            labelled_graphs(frames.select(split.validation), 5.0, args.dtype))
    result = {}
    for k, model in enumerate(TRAIN_MODELS):
        seconds = share(deadline, len(TRAIN_MODELS) - k)
        seconds = min(seconds, QUICK_TRAIN_SECONDS) if args.quick else seconds
        result[model] = guarded(errors, f"training {model}", lambda: training_speed(
            model, data, args.dtype, seconds, args.quick))
        if result[model]:
            print(f"training {model:6s} {result[model]['frames_per_second'] or float('nan'):9.1f} frames/s "
                  f"({result[model]['steps_after_compilation']} steps after "
                  f"{result[model]['compile_seconds']:.1f} s compiling)")
    return result


def decomposition_speed(potential, params, graph, max_order: int, chunk: int, repeats: int,
                        seconds: float) -> dict:
    """Seconds of the n-body decomposition and of all walk relevances of one frame beside one
    energy + forces evaluation; each timed call is repeated only while ``seconds`` allow."""
    deadline = time.perf_counter() + seconds
    energy_and_forces = jax.jit(potential.energy_and_forces)
    jax.block_until_ready(energy_and_forces(params, graph))
    ef_seconds, _ = best_of(lambda: jax.block_until_ready(energy_and_forces(params, graph)), 20)
    calls = {"nbody_decomposition": lambda: nbody_decomposition(potential, params, graph, max_order=max_order,
                                                                chunk_size=chunk),
             "walk_relevance": lambda: all_walk_relevances(potential, params, graph, chunk_size=chunk)[1]}
    result = {"model": potential.config.to_dict(), "chunk_size": chunk, "energy_and_forces_seconds": ef_seconds}
    for n_left, (name, fn) in zip((2, 1), calls.items()):
        tic = time.perf_counter()
        out = fn()
        first = time.perf_counter() - tic
        n = int(np.clip(share(deadline, n_left) // first, 1, repeats))
        best, out = best_of(fn, n)
        result[name] = {"seconds": best, "seconds_first_call_with_compile": first,
                        "ratio_to_energy_and_forces": best / ef_seconds, "timing": f"best of {n}"}
        if name == "walk_relevance":
            result[name].update(n_walks=len(out), includes="all_walk_relevances: every walk and its relevance")
        else:
            result[name].update(max_order=max_order, n_terms={str(k): len(t.atoms) for k, t in out.orders.items()},
                                energy_eV=out.energy, total_relevance_eV=out.total)
    return result


def decomposition_section(args, structures: list, deadline: float, errors: list) -> dict:
    coords, cell, source = reference_frame()
    water = next(s for s in structures if s["system"] == "water64")
    frames = {
        "published_frame": dict(graph=build_graphs(coords, np.ones(len(coords), np.int32), 5.0, cell=cell).frame(0),
                                config=ModelConfig("schnet", (1,), cutoff=5.0, n_features=128, n_interactions=3,
                                                   n_rbf=20, dtype=args.dtype), source=source),
        "water64": dict(graph=build_graphs(water["positions"], water["species"], 5.0, cell=water["cell"]).frame(0),
                        config=ModelConfig("schnet", (1, 8), cutoff=5.0, n_features=32, n_interactions=2,
                                           n_rbf=20, dtype=args.dtype), source=water["source"])}
    result = {}
    for k, (name, frame) in enumerate(frames.items()):
        graph = frame["graph"].astype(args.dtype)
        potential, params = Potential.create(frame["config"], seed=0)

        def measure():
            entry = decomposition_speed(potential, params, graph, 3, args.chunk_size, args.repeats,
                                        share(deadline, len(frames) - k))
            n_edges = int(graph.edge_mask.sum())
            return {"frame": frame["source"], "n_atoms": int(graph.node_mask.sum()), "n_directed_edges": n_edges,
                    **entry}

        result[name] = guarded(errors, f"decomposition {name}", measure)
        if result[name]:
            print(f"decomposition {name:15s} energy+forces {result[name]['energy_and_forces_seconds'] * 1e3:8.2f} ms  "
                  f"n-body {result[name]['nbody_decomposition']['seconds']:7.3f} s  "
                  f"walks {result[name]['walk_relevance']['seconds']:7.3f} s")
    return result


def md_section(args, structures: list, budget: Budget, deadline: float, errors: list) -> list:
    mode = "quick" if args.quick else "full"
    entries = [(system, model) for system in structures for model in MD_MODELS]
    n_left = len(entries) * len(args.replicas)
    runs = []
    for system, model in entries:
        config = ModelConfig(model, tuple(sorted(set(system["species"].tolist()))), cutoff=5.0, n_features=64,
                             n_interactions=3, n_rbf=20, dtype=args.dtype)
        potential, params = Potential.create(config, seed=0)
        atoms = atoms_of(system)
        graph = build_graphs(system["positions"], system["species"], 5.0,
                             cell=system["cell"]).frame(0).astype(args.dtype)
        energy_and_forces = jax.jit(potential.energy_and_forces)
        jax.block_until_ready(energy_and_forces(params, graph))
        # a step costs about two energy + forces calls per replica, until a run measures it
        step_guess, guessed_replicas = 2 * best_of(
            lambda: jax.block_until_ready(energy_and_forces(params, graph)), 5)[0], 1
        for replicas in args.replicas:
            label = f"md {system['system']} {model} R={replicas}"
            if budget.left() <= 0:
                errors.append({"entry": label, "error": "skipped: the budget was spent"})
                n_left -= 1
                continue
            # half of the entry's share for the steps, half for compiling
            steps = int(0.5 * share(deadline, n_left) / (step_guess * replicas / guessed_replicas))
            steps = int(np.clip(steps, MD_MIN_STEPS[mode], MD_STEPS[mode][system["system"]]))
            steps = steps // MD_BLOCK * MD_BLOCK if steps > MD_BLOCK else steps
            n_left -= 1
            run = guarded(errors, label, lambda: jax_md_run(potential, params, system, atoms, steps, replicas,
                                                            UNTRAINED_MASS_FACTOR))
            if run is None:
                continue
            step_guess, guessed_replicas = 1.0 / run["steps_per_second"], replicas
            n_atoms = len(system["species"])
            runs.append({"system": system["system"], "model": model, "n_atoms": n_atoms,
                         "periodic": system["cell"] is not None, "source": system["source"],
                         "temperature_K": system["temperature_K"],
                         "weights": "untrained (random weights, seed 0)", "mass_factor": UNTRAINED_MASS_FACTOR,
                         **run, "atom_steps_per_second": run["replica_steps_per_second"] * n_atoms})
            print(f"md {system['system']:9s} {model:6s} R={replicas:2d} {run['steps_per_second']:9.1f} steps/s "
                  f"({steps} steps)")
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-minutes", type=float, default=8.0,
                        help="wall-clock budget of the whole suite, minutes (default 8)")
    parser.add_argument("--quick", action="store_true", help="CPU smoke run: few frames, steps and repeats")
    parser.add_argument("--float64", action="store_true", help="float64 models (default float32)")
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--repeats", type=int, default=3, help="most timed calls per decomposition (best of)")
    parser.add_argument("--replicas", type=int, nargs="+", help="MD replica counts (default 1 8; 1 2 with --quick)")
    parser.add_argument("--chunk-size", type=int, default=CHUNK["schnet"],
                        help="masks per vmapped backward in the decomposition")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    if args.quick:
        args.repeats = 1
    args.replicas = args.replicas or ([1, 2] if args.quick else [1, 8])
    args.dtype = "float64" if args.float64 else "float32"
    jax.config.update("jax_enable_x64", args.float64)
    cache = tempfile.TemporaryDirectory(prefix="jaxrel-gpu-suite-")
    for option, value in (("jax_compilation_cache_dir", cache.name), ("jax_persistent_cache_min_compile_time_secs", 0),
                          ("jax_persistent_cache_min_entry_size_bytes", -1)):
        jax.config.update(option, value)

    start = time.perf_counter()
    budget = Budget(args.budget_minutes, {name: SECTIONS[name] for name in args.sections})
    devices = jax.devices()
    host = machine()
    result = {"benchmark": "gpu_suite", "command": "python benchmarks/gpu_suite.py " + " ".join(sys.argv[1:]),
              "machine": host, "date": host["date"], "jax": jax.__version__, "backend": jax.default_backend(),
              "device_kind": devices[0].device_kind, "device_count": len(devices),
              "load_average_1min_at_start": os.getloadavg()[0],
              "settings": {"dtype": args.dtype, "quick": args.quick, "budget_minutes": args.budget_minutes,
                           "sections": args.sections, "repeats": args.repeats, "replicas": args.replicas,
                           "section_weights": SECTIONS,
                           "compilation_cache": "persistent, in a temporary folder removed at the end"},
              "section_seconds": {}, "errors": []}
    tic = time.perf_counter()
    structures = systems(args.quick) if {"decomposition", "md"} & set(args.sections) else []
    result["section_seconds"]["setup"] = time.perf_counter() - tic
    for name in args.sections:
        deadline = budget.section(name)
        tic = time.perf_counter()
        if name == "training":
            result[name] = training_section(args, deadline, result["errors"])
        elif name == "decomposition":
            result[name] = decomposition_section(args, structures, deadline, result["errors"])
        else:
            result[name] = md_section(args, structures, budget, deadline, result["errors"])
        result["section_seconds"][name] = time.perf_counter() - tic
        print(f"{name}: {result['section_seconds'][name]:.1f} s")
    result["wall_seconds"] = time.perf_counter() - start
    result["load_average_1min_at_end"] = os.getloadavg()[0]
    cache.cleanup()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"gpu_suite_{result['backend']}{'_float64' if args.float64 else ''}.json"
    write_json(path, result)
    print(f"wrote {path} ({result['wall_seconds'] / 60:.1f} min, {len(result['errors'])} errors)")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
