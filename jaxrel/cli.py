"""Command line: ``jaxrel train | evaluate | explain | report | md | generate | quickstart``.

Units everywhere: lengths Å, energies eV, forces eV/Å, temperatures K, times fs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

DEFAULT_RUN_DIR = "runs/quickstart"


def _train(args) -> dict:
    from jaxrel.data import Dataset, fit_species_energies, read_frames, split_frames
    from jaxrel.models import ModelConfig, Potential
    from jaxrel.train import TrainConfig, evaluate, labelled_graphs, save_checkpoint, train

    frames = read_frames(args.data)
    n = len(frames)
    n_val = args.validation if args.validation is not None else max(1, round(0.05 * n))
    if args.test_data:
        test_frames = read_frames(args.test_data)
        n_train = args.train if args.train is not None else n - n_val
        split = split_frames(n, n_train, n_val, 0, seed=args.seed)
    else:
        n_train = args.train if args.train is not None else round(0.8 * n)
        split = split_frames(n, n_train, n_val, None, seed=args.seed)
        test_frames = frames.select(split.test)
    if len(split.train) == 0 or len(split.validation) == 0 or len(test_frames) == 0:
        raise ValueError(f"{args.data} has {n} frames: too few for non-empty train ({len(split.train)}), "
                         f"validation ({len(split.validation)}) and test ({len(test_frames)}) sets; "
                         "give more frames, --test-data, or smaller --train/--validation")
    fit = frames.energies is not None and args.species_energies == "fit"
    dataset = Dataset(frames, split, fit_species_energies(frames, split.train) if fit else {})
    train_frames, val_frames = dataset.subset("train"), dataset.subset("validation")
    species_energies = dataset.species_energies
    if train_frames.forces is not None:
        scale = float(np.sqrt(np.mean(train_frames.forces ** 2)))
    else:
        residual = train_frames.energies - sum(species_energies.get(int(z), 0.0) for z in frames.species)
        scale = float(np.std(residual) / np.sqrt(len(frames.species)))
    species = sorted(set(frames.species.tolist()) | set(test_frames.species.tolist()))
    config = ModelConfig(args.model, tuple(species), cutoff=args.cutoff, n_features=args.features,
                         n_interactions=args.interactions, n_rbf=args.rbf, dtype=args.dtype)
    potential, params = Potential.create(config, species_energies, max(scale, 1e-3), seed=args.seed)
    train_cfg = TrainConfig(epochs=args.epochs, minutes=args.minutes, batch_size=args.batch_size,
                            learning_rate=args.lr, energy_weight=args.energy_weight,
                            forces_weight=args.forces_weight, seed=args.seed)
    data = {name: labelled_graphs(f, args.cutoff, args.dtype)
            for name, f in (("train", train_frames), ("validation", val_frames), ("test", test_frames))}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    best, history = train(potential, params, data["train"], data["validation"], train_cfg,
                          checkpoint_dir=out / "model", progress=not args.quiet)
    metrics = {name: evaluate(potential, best, *data[name]) for name in ("validation", "test")}
    metrics["training"] = {k: history[k] for k in ("seconds", "epochs", "steps", "best_epoch",
                                                   "frames_per_second")}
    metrics["n_frames"] = {"train": len(train_frames), "validation": len(val_frames),
                           "test": len(test_frames)}
    run = {"command": sys.argv, "data": str(args.data), "test_data": args.test_data,
           "model": config.to_dict(), "training": vars(args) | {"func": None},
           "species_energies_eV": {str(k): v for k, v in species_energies.items()},
           "energy_scale_eV": scale, "history": history}
    save_checkpoint(out / "model", potential, best, metadata={"run": run, "metrics": metrics})
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def _evaluate(args) -> dict:
    from jaxrel.data import read_frames
    from jaxrel.train import evaluate, labelled_graphs, load_checkpoint

    potential, params, _ = load_checkpoint(args.model)
    frames = read_frames(args.data)
    potential.check_species(frames.species)
    graph, targets = labelled_graphs(frames, potential.config.cutoff, potential.config.dtype)
    return {"test": evaluate(potential, params, graph, targets)}


def _frame_range(spec: str | None, n_frames: int) -> list[int]:
    """'0:10', '3', '::5' or None (all) → frame indices; clear error when empty."""
    if spec is None:
        return list(range(n_frames))
    try:
        parts = [int(p) if p else None for p in spec.split(":")]
        frames = list(range(n_frames))[slice(*parts)] if len(parts) > 1 else [parts[0]]
    except (ValueError, TypeError):
        raise ValueError(f"--frames {spec!r} is not an index or start:stop[:step] slice") from None
    if not frames or any(not 0 <= f < n_frames for f in frames):
        raise ValueError(f"--frames {spec!r} selects no frame of the {n_frames} in the data; "
                         f"use indices 0..{n_frames - 1}")
    return frames


def _explain(args) -> dict:
    from jaxrel.data import read_frames
    from jaxrel.graph import build_graphs
    from jaxrel.relevance import RuleSet, nbody_decomposition_frames, save_nbody
    from jaxrel.train import load_checkpoint

    potential, params, _ = load_checkpoint(args.model)
    frames = read_frames(args.data)
    index = _frame_range(args.frames, len(frames))
    selected = frames.select(np.array(index))
    potential.check_species(selected.species)
    graph = build_graphs(selected.positions, selected.species, potential.config.cutoff,
                         cell=selected.cell).astype(potential.config.dtype)
    rules = RuleSet(args.rule, epsilon=args.epsilon, gamma=args.gamma)
    shifts = dict(zip(potential.config.species, np.asarray(params["shifts"][...], np.float64)))
    shift_total = float(sum(shifts[int(z)] for z in selected.species))
    results = nbody_decomposition_frames(potential, params, graph, args.order, rules,
                                         progress=not args.quiet)
    summary = []
    for f, nb in zip(index, results):
        summary.append({
            "frame": f, "energy_eV": nb.energy, "sum_relevance_eV": nb.total,
            "species_shift_eV": shift_total,
            "conservation_error_eV": nb.energy - shift_total - nb.total,
            "higher_order_residual_eV": nb.residual,
            "body_order_totals_eV": {str(n): v for n, v in nb.order_totals.items()},
            "n_terms": {str(n): int(len(t.atoms)) for n, t in nb.orders.items()},
            "seconds": nb.seconds})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    geometry = {"positions": np.asarray(selected.positions), "species": np.asarray(selected.species),
                "frame_index": np.asarray(index)}
    if selected.cell is not None:
        geometry["cell"] = np.broadcast_to(np.asarray(selected.cell), (len(index), 3, 3))
    save_nbody(results, out / "nbody.npz", index, extra=geometry)
    report = {"model": str(args.model), "data": str(args.data), "rule": args.rule,
              "epsilon": args.epsilon, "gamma": args.gamma, "max_order": args.order,
              "units": {"energy": "eV", "distance": "Å", "angle": "degree"},
              "notes": {"sum_relevance_eV": "Σ of all walk relevances = unmasked gradient × input",
                        "conservation_error_eV": "energy − species shifts − Σ relevance: relevance "
                                                 "absorbed by biases and rule stabilisers",
                        "higher_order_residual_eV": "Σ relevance − Σ listed n-body terms: terms of "
                                                    "body order above --order"},
              "frames": summary}
    (out / "summary.json").write_text(json.dumps(report, indent=2))
    return {"out": str(out), "frames": len(index),
            "mean_seconds_per_frame": float(np.mean([s["seconds"] for s in summary])),
            "max_abs_conservation_error_eV": float(max(abs(s["conservation_error_eV"]) for s in summary))}


def _generate(args) -> dict:
    from jaxrel.data.noble_gas import generate_noble_gas, save_noble_gas

    start = time.perf_counter()
    data = generate_noble_gas(args.species, n_atoms=args.atoms, n_frames=args.frames, seed=args.seed,
                              temperature=args.temperature, cutoff=args.cutoff,
                              three_body=not args.no_three_body, progress=not args.quiet)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_noble_gas(data, args.out)
    return {"out": str(args.out), "n_frames": int(len(data["energies"])),
            "n_atoms": int(len(data["species"])), "temperature_K": float(data["temperature_K"]),
            "cutoff_A": float(data["cutoff"]), "three_body": bool(data["three_body"]),
            "seconds": round(time.perf_counter() - start, 2)}


def _report(args) -> dict:
    from jaxrel.report import build_report

    result = build_report(args.explained, args.out, model_dir=args.model, data_path=args.data)
    return {"report": str(result["report"]), "figures": len(result["figures"]),
            "recovery": result["recovery"] is not None}


def _stage(k: int, text: str) -> None:
    print(f"[{k}/5] {text}", flush=True)


def _quickstart(args) -> dict:
    """Generate argon, train SchNet, explain held-out frames, compare with the exact physics."""
    from jaxrel.report import build_report

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seconds = {}
    clock = time.perf_counter()
    train_path, heldout_path = out / "argon.npz", out / "argon_heldout.npz"
    _stage(1, f"generating liquid argon (Lennard-Jones + Axilrod–Teller–Muto, exact n-body terms): "
              f"{args.frames} training frames → {train_path}, {args.explain_frames} held-out frames → {heldout_path}")
    for path, n_frames, seed in ((train_path, args.frames, 0), (heldout_path, args.explain_frames, 1)):
        data = _generate(argparse.Namespace(species="Ar", atoms=64, frames=n_frames, seed=seed, temperature=None,
                                            cutoff=None, no_three_body=False, quiet=False, out=path))
    cutoff = data["cutoff_A"]
    seconds["generate"] = time.perf_counter() - clock

    clock = time.perf_counter()
    _stage(2, f"training SchNet (32 features, 2 interactions, cutoff {cutoff:.2f} Å as the physics, "
              f"zero species energies as for isolated noble-gas atoms) for {args.minutes} min")
    metrics = _train(argparse.Namespace(
        data=str(train_path), test_data=str(heldout_path), model="schnet", cutoff=cutoff, features=32,
        interactions=2, rbf=20, dtype="float32", epochs=None, minutes=args.minutes, batch_size=8,
        lr=1e-3, energy_weight=0.5, forces_weight=0.5, seed=0, train=None, validation=None,
        species_energies="zero", quiet=False, out=str(out)))
    seconds["train"] = time.perf_counter() - clock

    clock = time.perf_counter()
    _stage(3, f"explaining the {args.explain_frames} held-out frames up to 3-body terms (GNN-LRP, GI rule)")
    explained = _explain(argparse.Namespace(
        model=str(out / "model"), data=str(heldout_path), frames=None, order=3, rule="gi", epsilon=0.01,
        gamma=0.25, quiet=False, out=str(out / "explained")))
    seconds["explain"] = time.perf_counter() - clock

    clock = time.perf_counter()
    _stage(4, "analysing the relevance and comparing it with the exact pair, triplet and local energies")
    test = metrics["test"]
    notes = [f"Liquid argon, 64 atoms, Lennard-Jones + Axilrod–Teller–Muto. SchNet trained for {args.minutes} "
             f"min on {metrics['n_frames']['train']} frames; held-out test errors: energy MAE "
             f"{test['energy_mae_meV'] / 64:.3f} meV/atom, force MAE {test['forces_mae_meV_per_A']:.2f} meV/Å "
             f"(reference force RMS {test['forces_reference_rms_meV_per_A']:.1f} meV/Å)."]
    report = build_report(out / "explained", out, title="jaxrel quickstart: what SchNet learned about liquid argon",
                          notes=notes, progress=True)
    seconds["analyse_and_report"] = time.perf_counter() - clock
    _stage(5, f"report written: {report['report']}")

    recovery, shares = report["recovery"], report["analysis"]["body_order_shares"]
    summary_frames = json.loads((out / "explained" / "summary.json").read_text())["frames"]
    summary = {
        "report": str(report["report"]), "model": str(out / "model"), "test_errors": test,
        "explain": explained, "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "conservation_error_eV": [f["conservation_error_eV"] for f in summary_frames],
        "higher_order_residual_eV": [f["higher_order_residual_eV"] for f in summary_frames],
        "body_order_energy_share": {n: v["pooled"] for n, v in shares["energy_share"].items()},
        "recovery": {k: recovery[k] for k in ("pairs", "triplets", "atomwise") if k in recovery}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    pairs, triplets, atomwise = (summary["recovery"].get(k) for k in ("pairs", "triplets", "atomwise"))
    print(f"test errors: energy {test['energy_mae_meV'] / 64:.3f} meV/atom, forces {test['forces_mae_meV_per_A']:.2f} meV/Å")
    print(f"2-body terms vs exact LJ pair energies: r = {pairs['pearson_r']:.3f}, MAE {pairs['mae_eV'] * 1e3:.2f} meV; "
          f"Σ per frame {np.mean(pairs['recovered_total_eV']):.3f} eV (exact {np.mean(pairs['exact_total_eV']):.3f})")
    if triplets:
        print(f"3-body total per frame {np.mean(triplets['recovered_total_eV']):.3f} eV "
              f"(exact ATM {np.mean(triplets['exact_total_eV']):.3f} eV)")
    if atomwise:
        print(f"atomwise energies vs exact local energies: r = {atomwise['pearson_r']:.3f}, "
              f"MAE {atomwise['mae'] * 1e3:.2f} meV")
    print(f"largest |conservation error| {max(map(abs, summary['conservation_error_eV'])):.3g} eV "
          f"(relevance absorbed by biases); total {sum(seconds.values()) / 60:.1f} min")
    print(f"report: {report['report']}  summary: {out / 'summary.json'}")
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxrel", description="Explain machine-learned interatomic potentials (units: Å, eV, eV/Å, K, fs).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train SchNet or PaiNN on energies and/or forces")
    p.add_argument("--data", required=True, help="rMD17/water/CG npz, jaxrel noble-gas npz, or any file ase reads")
    p.add_argument("--test-data", help="separate test file (else a test split of --data)")
    p.add_argument("--model", choices=["schnet", "painn"], default="schnet")
    p.add_argument("--cutoff", type=float, default=5.0, help="neighbour cutoff, Å (default 5)")
    p.add_argument("--features", type=int, default=64, help="feature width (default 64)")
    p.add_argument("--interactions", type=int, default=3, help="message-passing layers (default 3)")
    p.add_argument("--rbf", type=int, default=20, help="radial basis functions (default 20)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    stop = p.add_mutually_exclusive_group(required=True)
    stop.add_argument("--epochs", type=int)
    stop.add_argument("--minutes", type=float, help="wall-clock training budget")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3, help="initial learning rate (decays to 2e-5)")
    p.add_argument("--energy-weight", type=float, default=0.05,
                   help="loss weight of the per-atom energy error, eV² (0: force matching)")
    p.add_argument("--forces-weight", type=float, default=0.95, help="loss weight of force errors, (eV/Å)²")
    p.add_argument("--species-energies", choices=["fit", "zero"], default="fit",
                   help="per-species energy shifts: least-squares fit to the training energies "
                        "(default) or zero (isolated atoms at energy 0, e.g. noble-gas ground truth)")
    p.add_argument("--train", type=int, help="training frames (default: all but validation/test)")
    p.add_argument("--validation", type=int, help="validation frames (default 5%%)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--out", required=True, help="output folder: OUT/model/ and OUT/metrics.json")
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="errors of a trained model on labelled frames (JSON)")
    p.add_argument("--model", required=True, help="model folder written by train (OUT/model)")
    p.add_argument("--data", required=True)
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("explain", help="exact n-body relevance decomposition (GNN-LRP) of frames")
    p.add_argument("--model", required=True, help="model folder written by train (OUT/model)")
    p.add_argument("--data", required=True)
    p.add_argument("--frames", help="index or start:stop[:step] slice (default: all)")
    p.add_argument("--order", type=int, default=3, help="highest body order (≤ interactions + 1)")
    p.add_argument("--rule", choices=["gi", "lrp-eps", "lrp-gamma"], default="gi")
    p.add_argument("--epsilon", type=float, default=0.01, help="ε of lrp-eps")
    p.add_argument("--gamma", type=float, default=0.25, help="γ of lrp-gamma")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--out", required=True, help="folder for nbody.npz and summary.json")
    p.set_defaults(func=_explain)

    p = sub.add_parser("generate", help="ground-truth data sets")
    gsub = p.add_subparsers(dest="system", required=True)
    g = gsub.add_parser("noble-gas", help="Ar/Kr liquid, LJ + Axilrod–Teller–Muto, exact n-body terms")
    g.add_argument("--species", choices=["Ar", "Kr", "ArKr"], default="Ar")
    g.add_argument("--atoms", type=int, default=64)
    g.add_argument("--frames", type=int, default=100)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--temperature", type=float, help="K (default: near the triple point)")
    g.add_argument("--cutoff", type=float, help="Å (default 2.5 σ)")
    g.add_argument("--no-three-body", action="store_true", help="switch the ATM term off (null test)")
    g.add_argument("--quiet", action="store_true")
    g.add_argument("--out", required=True, help="output .npz")
    g.set_defaults(func=_generate)

    p = sub.add_parser("report", help="HTML report with figures of a 'jaxrel explain' folder")
    p.add_argument("--explained", required=True, help="folder written by 'jaxrel explain'")
    p.add_argument("--out", help="folder for report.html and figures/ (default: --explained)")
    p.add_argument("--model", help="model folder (default: the one recorded by explain)")
    p.add_argument("--data", help="data file (default: the one recorded by explain); a "
                                  "'jaxrel generate noble-gas' file adds the recovery of the exact terms")
    p.set_defaults(func=_report)

    p = sub.add_parser("quickstart", help="generate liquid argon, train SchNet, explain held-out frames, "
                                          "compare with the exact physics, write report.html")
    p.add_argument("--out", default=DEFAULT_RUN_DIR)
    p.add_argument("--minutes", type=float, default=4.0, help="training time (default 4)")
    p.add_argument("--frames", type=int, default=200, help="training frames (default 200)")
    p.add_argument("--explain-frames", type=int, default=8, help="held-out frames to explain (default 8)")
    p.set_defaults(func=_quickstart)

    p = sub.add_parser("md", help="molecular dynamics with a trained model, then stability metrics "
                                  "(Fu et al. 2023) against the data")
    p.add_argument("--model", required=True, help="model folder written by train (OUT/model)")
    p.add_argument("--data", required=True, help="frames of the system: the start frame and the "
                                                 "reference for h(r) / RDF and bond lengths")
    p.add_argument("--frame", type=int, default=0, help="start frame of every replica (default 0)")
    p.add_argument("--ensemble", choices=["nve", "nvt-nh", "nvt-langevin"], default="nve",
                   help="velocity Verlet, Nosé–Hoover chain or Langevin (BAOAB)")
    p.add_argument("--temperature", type=float, default=300.0,
                   help="K: initial Maxwell–Boltzmann velocities and thermostat target (default 300)")
    p.add_argument("--dt", type=float, default=0.5, help="time step, fs (default 0.5)")
    p.add_argument("--time", type=float, default=10.0, help="simulated time, ps (default 10)")
    p.add_argument("--replicas", type=int, default=1,
                   help="independent runs vmapped together; replica r uses seed + r (default 1)")
    p.add_argument("--log-every", type=int, default=100, help="steps per logged frame (default 100)")
    p.add_argument("--friction", type=float, default=1.0, help="Langevin friction, 1/ps (default 1)")
    p.add_argument("--tau", type=float, default=100.0, help="Nosé–Hoover time constant, fs (default 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--out", required=True,
                   help="folder for trajectory.extxyz (replica 0; trajectory_r<k>.extxyz for replica k), "
                        "thermo.csv and stability.json")
    p.set_defaults(func=_md)
    return parser


def _md(args) -> dict:
    from jaxrel.data import read_frames
    from jaxrel.md import MDConfig, simulate, write_thermo, write_trajectory
    from jaxrel.stability import stability_report
    from jaxrel.train import load_checkpoint

    potential, params, _ = load_checkpoint(args.model)
    frames = read_frames(args.data)
    if not 0 <= args.frame < len(frames):
        raise ValueError(f"--frame {args.frame} is not a frame of the {len(frames)} in {args.data}; "
                         f"use 0..{len(frames) - 1}")
    if args.replicas < 1:
        raise ValueError(f"--replicas is {args.replicas}; run at least 1")
    if not (args.time > 0 and args.dt > 0):
        raise ValueError(f"--time is {args.time} ps and --dt is {args.dt} fs; both must be positive")
    n_steps = round(args.time * 1000 / args.dt)
    if n_steps < 1:
        raise ValueError(f"--time {args.time} ps is shorter than one --dt {args.dt} fs step; "
                         "simulate longer or use a smaller step")
    config = MDConfig(args.ensemble, dt_fs=args.dt, temperature_K=args.temperature, n_steps=n_steps,
                      log_every=args.log_every, friction_per_ps=args.friction, tau_fs=args.tau,
                      seed=args.seed)
    cell = frames.cell if frames.cell is None or frames.cell.ndim == 2 else frames.cell[args.frame]
    start = np.broadcast_to(frames.positions[args.frame], (args.replicas, *frames.positions.shape[1:]))
    traj = simulate(potential, params, start, frames.species, cell=cell, config=config,
                    progress=not args.quiet)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for r in range(args.replicas):
        write_trajectory(traj, out / ("trajectory.extxyz" if r == 0 else f"trajectory_r{r}.extxyz"), replica=r)
    write_thermo(traj, out / "thermo.csv")
    report = stability_report(traj, frames.positions, frames.species, cell, molecule=cell is None,
                              ensemble=args.ensemble)
    report |= {"n_reallocations": traj.n_reallocations, "model": str(args.model), "data": str(args.data),
               "frame": args.frame, "config": vars(config) | {"n_replicas": args.replicas},
               "units": {"time": "ps", "dt": "fs", "temperature": "K", "energy": "eV"}}
    (out / "stability.json").write_text(json.dumps(report, indent=2))
    return {"out": str(out), "stable": report["stable"],
            "time_to_instability_ps": report["time_to_instability_ps"],
            "simulated_time_ps": report["simulated_time_ps"], "steps_per_second": report["steps_per_second"]}


def main(argv: list[str] | None = None) -> int:
    # jax_md's neighbour lists scatter int64 into int32 arrays; harmless, and not the user's doing.
    warnings.filterwarnings("ignore", message="scatter inputs have incompatible types", category=FutureWarning)
    # jax_md asks for float64 sums in float32 runs; jax truncates them to float32 as intended.
    warnings.filterwarnings("ignore", message="Explicitly requested dtype float64", category=UserWarning)
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except (ValueError, FileNotFoundError, FloatingPointError) as err:
        print(f"jaxrel {args.command}: error: {err}", file=sys.stderr)
        return 2
    if args.command != "quickstart":
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
