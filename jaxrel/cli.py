"""Command line: ``jaxrel train | evaluate | explain | audit | report | md | generate | chempot | quickstart``.

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

from jaxrel.files import jsonable
from jaxrel.models.potential import ARCHITECTURES
from jaxrel.quickstart import DEFAULT_RUN_DIR


def _train(args) -> dict:
    from jaxrel.train import train_potential

    metrics = train_potential(args.data, args.out, test_data=args.test_data, model=args.model, cutoff=args.cutoff,
                           n_features=args.features, n_interactions=args.interactions, n_rbf=args.rbf,
                           dtype=args.dtype, lmax=args.lmax, epochs=args.epochs, minutes=args.minutes,
                           batch_size=args.batch_size,
                           learning_rate=args.lr, energy_weight=args.energy_weight,
                           forces_weight=args.forces_weight, species_energies=args.species_energies,
                           n_train=args.train, n_validation=args.validation, seed=args.seed, seeds=args.seeds,
                           prior=None if args.prior == "none" else args.prior, target=args.target,
                           readout=args.readout, overwrite=args.overwrite,
                           progress=not args.quiet, mesh=_mesh(args))
    training = metrics["training"]
    if training["interrupted"]:
        print(f"jaxrel train: interrupted at epoch {training['epochs']}; the best model (epoch "
              f"{training['best_epoch']}) and its metrics are in {args.out}", file=sys.stderr)
        return metrics | {"interrupted": True}
    return metrics


def _multiplicities(text: str) -> tuple[int, ...]:
    """'64' or '32,16,8' → (64,) or (32, 16, 8); argparse turns the ValueError into a usage error."""
    values = tuple(int(v) for v in text.split(","))
    if min(values) < 1:
        raise ValueError(text)
    return values


def _evaluate(args) -> dict:
    from jaxrel.checkpoint import load_checkpoint
    from jaxrel.data import read_molecules
    from jaxrel.train import evaluate, labelled_graphs

    mesh = _mesh(args)
    potential, params, _ = load_checkpoint(args.model)
    molecules = read_molecules(args.data)
    for frames in molecules:
        potential.check_species(frames.species)
    graph, targets = labelled_graphs(molecules, potential.config.cutoff, potential.config.dtype,
                                     target=potential.config.target)
    return {"test": evaluate(potential, params, graph, targets, mesh=mesh)}


def _add_device_options(p: argparse.ArgumentParser) -> None:
    """--devices, and --processes, --process-id, --coordinator for a run over several hosts (read by
    :func:`_mesh`)."""
    p.add_argument("--devices", type=int, metavar="N",
                   help="devices per process that the frames are split over (default: all local devices, "
                        "e.g. every GPU of the node)")
    p.add_argument("--processes", type=int, default=1, metavar="P",
                   help="processes of a run over several hosts, one per host, each started with the same "
                        "command and its own --process-id (default 1)")
    p.add_argument("--process-id", type=int, default=0, metavar="K",
                   help="this process's number, 0 to P - 1; process 0 is the coordinator and the only one "
                        "that writes files (default 0)")
    p.add_argument("--coordinator", metavar="HOST:PORT",
                   help="where process 0 listens, the same for every process (with --processes > 1), "
                        "e.g. node0:1234")


def _mesh(args):
    """Join the run of --processes (:func:`jaxrel.parallel.initialize`) and return the mesh over
    --devices devices per process (:func:`jaxrel.parallel.batch_mesh`)."""
    from jaxrel.parallel import batch_mesh, initialize

    initialize(args.processes, args.process_id, args.coordinator)
    return batch_mesh(args.devices)


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
    from jaxrel.analysis.report import FILES as REPORT_FILES
    from jaxrel.checkpoint import load_models
    from jaxrel.data import read_frames
    from jaxrel.files import prepare_output
    from jaxrel.nn import RuleSet
    from jaxrel.relevance import ensemble_mean, explain
    from jaxrel.relevance.explanation import FILES
    from jaxrel.relevance.nbody import check_max_order

    rules = RuleSet(args.rule, epsilon=args.epsilon, gamma=args.gamma)
    models = load_models(args.model)
    frames = read_frames(args.data, molecule=args.molecule)
    index = _frame_range(args.frames, len(frames))
    for potential, _, _ in models:
        potential.check_species(frames.species)
        if potential.has_layers:
            check_max_order(potential, args.order)
    mesh = _mesh(args)
    prepare_output(args.out, (*FILES, *REPORT_FILES, "seed*"), overwrite=args.overwrite)
    members = [explain(potential, params, frames.select(np.array(index)), max_order=args.order, rules=rules,
                       frame_index=index, model_path=args.model, data_path=args.data, progress=not args.quiet,
                       mesh=mesh)
               for potential, params, _ in models]
    explanation = members[0]
    if len(members) > 1:          # an ensemble: each seed in OUT/seed<s>/, the mean with spreads in OUT/
        seeds = [m["seed"] for _, _, m in models]
        for seed, member in zip(seeds, members):
            member.save(Path(args.out) / f"seed{seed}")
        explanation = ensemble_mean(members, seeds)
    out = explanation.save(args.out)
    return {"out": str(out), "frames": len(index), "seeds": explanation.metadata.get("seeds"),
            "mean_seconds_per_frame": float(np.mean(explanation.seconds)),
            "max_abs_conservation_error_eV": float(np.abs(explanation.conservation_error).max())}


def _audit(args) -> dict:
    from jaxrel.audit import FILES, audit_to_folder
    from jaxrel.checkpoint import load_models
    from jaxrel.data import read_frames
    from jaxrel.files import prepare_output

    models = load_models(args.model)
    frames = read_frames(args.data, molecule=args.molecule)
    index = _frame_range(args.frames, len(frames))
    for potential, _, _ in models:
        potential.check_species(frames.species)
    rules = None if args.rules is None else [r.strip() for r in args.rules.split(",") if r.strip()]
    mesh = _mesh(args)
    prepare_output(args.out, FILES, overwrite=args.overwrite)
    audit, report = audit_to_folder([(p, q) for p, q, _ in models], frames.select(np.array(index)), args.out,
                                    seeds=[m.get("seed", 0) for _, _, m in models], frame_index=index,
                                    model_path=args.model, data_path=args.data, max_order=args.order,
                                    rules=rules, forces=not args.no_forces, reference=frames,
                                    progress=not args.quiet, mesh=mesh)
    return {"out": str(args.out), "report": str(report), "methods": list(audit.explanations),
            "seeds": audit.seeds, "verdict": audit.verdict,
            "stability_diagnostics": audit.diagnostics.values}


def _generate(args) -> dict:
    from jaxrel.data.noble_gas import generate_noble_gas, save_noble_gas
    from jaxrel.files import prepare_output_file

    prepare_output_file(args.out, overwrite=args.overwrite, suffix=".npz")
    start = time.perf_counter()
    data = generate_noble_gas(args.species, n_atoms=args.atoms, n_frames=args.frames, seed=args.seed,
                              temperature=args.temperature, cutoff=args.cutoff,
                              three_body=not args.no_three_body, progress=not args.quiet)
    save_noble_gas(data, args.out)
    return {"out": str(args.out), "n_frames": int(len(data["energies"])),
            "n_atoms": int(len(data["species"])), "temperature_K": float(data["temperature_K"]),
            "cutoff_A": float(data["cutoff"]), "three_body": bool(data["three_body"]),
            "seconds": round(time.perf_counter() - start, 2)}


def _generate_xtb(args) -> dict:
    from jaxrel.data.xtb import generate_xtb, save_xtb
    from jaxrel.files import prepare_output_file

    prepare_output_file(args.out, overwrite=args.overwrite, suffix=".npz")
    start = time.perf_counter()
    molecules = args.molecules if args.molecules == "g2" else [m.strip() for m in args.molecules.split(",")]
    data = generate_xtb(molecules, frames_per_molecule=args.frames_per_molecule, temperature=args.temperature,
                        seed=args.seed, progress=not args.quiet)
    save_xtb(data, args.out)
    return {"out": str(args.out), "n_frames": int(len(data.energies)),
            "n_molecules": int(len(np.unique(data.molecules))), "elements": list(data.elements),
            "n_skipped": data.n_skipped, "n_scf_failures": data.n_scf_failures,
            "seconds": round(time.perf_counter() - start, 2),
            "size_MB": round(Path(args.out).stat().st_size / 1e6, 2)}


def _report(args) -> dict:
    from jaxrel.analysis import build_report
    from jaxrel.analysis.report import FILES
    from jaxrel.files import prepare_output
    from jaxrel.relevance import Explanation

    explanation = Explanation.load(args.explained)
    data = args.data or explanation.metadata.get("data")
    frames = None
    if args.data is not None or args.model is not None:
        from jaxrel.data import read_frames

        frames = read_frames(data, molecule=explanation.metadata.get("molecule"))
        if not np.array_equal(frames.species, explanation.species):
            raise ValueError(f"--data {data} holds species {_species_text(frames.species)} but "
                             f"{args.explained} explains {_species_text(explanation.species)}; give the data "
                             "that was explained")
    chemistry = None
    if args.model is not None:
        from jaxrel.analysis.chemistry import chemical_insight
        from jaxrel.checkpoint import load_checkpoint

        potential, params, _ = load_checkpoint(args.model)
        chemistry = chemical_insight(potential, params, frames.select(explanation.frames))
    out = prepare_output(args.explained if args.out is None else args.out, FILES, overwrite=args.overwrite)
    result = build_report(explanation, out, data_path=args.data, chemistry=chemistry, chempot=args.chempot)
    return {"report": str(result["report"]), "figures": len(result["figures"]),
            "recovery": result["recovery"] is not None, "chemistry": chemistry is not None}


def _species_text(species) -> str:
    """'54 atoms of species 1, 6, 8' for messages."""
    return f"{len(species)} atoms of species {', '.join(map(str, sorted(set(np.asarray(species).tolist()))))}"


def _quickstart(args) -> dict:
    from jaxrel.quickstart import run_quickstart

    return run_quickstart(args.out, minutes=args.minutes, n_frames=args.frames, explain_frames=args.explain_frames,
                          overwrite=args.overwrite)


MOLECULE_HELP = ("the molecule to read from a file of several (a 'jaxrel generate xtb' file), by its name, "
                 "e.g. CH3CH2OH")
OVERWRITE_HELP = "replace an earlier run at --out (its files only; without this flag an existing run is refused)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxrel", description="Explain machine-learned interatomic potentials (units: Å, eV, eV/Å, K, fs).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train SchNet, PaiNN, NequIP or the body-ordered model on energies "
                                     "and/or forces")
    p.add_argument("--data", required=True, help="rMD17/water/CG npz, jaxrel noble-gas npz, or any file ase reads")
    p.add_argument("--test-data", help="separate test file (else a test split of --data)")
    p.add_argument("--model", choices=list(ARCHITECTURES), default="schnet")
    p.add_argument("--cutoff", type=float, default=5.0, help="neighbour cutoff, Å (default 5)")
    p.add_argument("--features", type=_multiplicities, default=(64,),
                   help="feature width (default 64); for nequip one multiplicity per l, e.g. 32,16,8 "
                        "(one value: the same for every l)")
    p.add_argument("--lmax", type=int, help="nequip only: largest rotation order l of features and "
                                            "spherical harmonics (default 1, or from --features)")
    p.add_argument("--interactions", type=int, default=3, help="message-passing layers (default 3; the "
                                                               "body-ordered model has none and ignores it)")
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
    p.add_argument("--target", choices=["energy", "gap", "dipole"], default="energy",
                   help="what the model predicts: the energy (eV; with forces, default), the HOMO–LUMO gap "
                        "(eV) or the dipole moment (e·Å, from latent atomic charges); gap and dipole need "
                        "labels such as those of 'jaxrel generate xtb'")
    p.add_argument("--readout", choices=["sum", "mean", "softmax"], default="sum",
                   help="how atomwise outputs combine: sum (extensive, default), mean or softmax-weighted "
                        "(intensive); a dipole model keeps sum (Σ q_i r_i)")
    p.add_argument("--prior", choices=["none", "repulsive"], default="none",
                   help="fixed pair term added to the network: 'repulsive' = ε (σ/r)^12 with σ the closest "
                        "approach of each species pair in the training data and ε = F_rms σ / 12, the "
                        "safeguard against bead overlap in coarse-grained force matching (default none)")
    p.add_argument("--train", type=int, help="training frames (default: all but validation/test)")
    p.add_argument("--validation", type=int, help="validation frames (default 5%%)")
    p.add_argument("--seed", type=int, default=0, help="split, shuffling and initialisation seed (default 0)")
    p.add_argument("--seeds", type=int, default=1,
                   help="ensemble size K: K models initialised with seeds seed … seed + K − 1, trained in one "
                        "vmapped run on the same batches and saved as OUT/model_seed<s>/ with OUT/ensemble.json "
                        "(explain and audit take OUT as --model and report the spread over seeds)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--out", required=True, help="output folder: OUT/model/ (or the ensemble) and OUT/metrics.json")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    _add_device_options(p)
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="errors of a trained model on labelled frames (JSON)")
    p.add_argument("--model", required=True, help="model folder written by train (OUT/model)")
    p.add_argument("--data", required=True, help="labelled frames; every molecule of a 'jaxrel generate xtb' file")
    _add_device_options(p)
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("explain", help="exact n-body relevance decomposition (GNN-LRP) of frames")
    p.add_argument("--model", required=True, help="model folder written by train (OUT/model), or an ensemble "
                                                  "(train --seeds: OUT; the mean and spread over seeds go to --out, "
                                                  "each seed to --out/seed<s>)")
    p.add_argument("--data", required=True)
    p.add_argument("--molecule", help=MOLECULE_HELP)
    p.add_argument("--frames", help="index or start:stop[:step] slice (default: all)")
    p.add_argument("--order", type=int, default=3, help="highest body order (≤ interactions + 1)")
    p.add_argument("--rule", choices=["gi", "lrp-eps", "lrp-gamma"], default="gi")
    p.add_argument("--epsilon", type=float, default=0.01, help="ε of lrp-eps")
    p.add_argument("--gamma", type=float, default=0.25, help="γ of lrp-gamma")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--out", required=True, help="folder for nbody.npz and summary.json")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    _add_device_options(p)
    p.set_defaults(func=_explain)

    p = sub.add_parser("audit", help="faithfulness: the model's many-body expansion beside GNN-LRP rules "
                                     "(and the exact terms of noble-gas data)")
    p.add_argument("--model", required=True, help="model folder written by train (OUT/model), or an ensemble "
                                                  "(train --seeds: OUT) whose mean and spread over seeds are audited")
    p.add_argument("--data", required=True, help="frames to audit; a 'jaxrel generate noble-gas' file adds "
                                                 "the comparison with the exact pair and triplet energies")
    p.add_argument("--molecule", help=MOLECULE_HELP)
    p.add_argument("--frames", default="0:8", help="index or start:stop[:step] slice (default 0:8)")
    p.add_argument("--order", type=int, default=3, help="highest body order (default 3; MBE ≤ 4, "
                                                          "GNN-LRP ≤ interactions + 1)")
    p.add_argument("--rules", help="comma-separated GNN-LRP rules among gi, lrp-eps, lrp-gamma (default: all "
                                   "three; none for --model bodyordered)")
    p.add_argument("--no-forces", action="store_true", help="skip the body-order split of the forces")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--out", required=True, help="folder for audit.json, report.html, figures/ and one "
                                                "explanation folder per method")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    _add_device_options(p)
    p.set_defaults(func=_audit)

    p = sub.add_parser("generate", help="ground-truth data sets")
    gsub = p.add_subparsers(dest="system", required=True)
    g = gsub.add_parser("noble-gas", help="Ar/Kr liquid, LJ + Axilrod–Teller–Muto, exact n-body terms")
    g.add_argument("--species", choices=["Ar", "Kr", "ArKr"], default="Ar")
    g.add_argument("--atoms", type=int, default=64)
    g.add_argument("--frames", type=int, default=100)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--temperature", type=float, help="K (default: near the triple point)")
    g.add_argument("--cutoff", type=float, help="Å (default 2.1 σ)")
    g.add_argument("--no-three-body", action="store_true", help="switch the ATM term off (null test)")
    g.add_argument("--quiet", action="store_true")
    g.add_argument("--out", required=True, help="output .npz")
    g.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    g.set_defaults(func=_generate)
    g = gsub.add_parser("xtb", help="G2 molecules (H to Cl), thermally rattled, labelled with GFN2-xTB (tblite): "
                                    "energies eV, forces eV/Å, HOMO–LUMO gaps eV, charges e, dipoles e·Å")
    g.add_argument("--molecules", default="g2",
                   help="'g2' (default: the 119 closed-shell G2 molecules) or comma-separated G2 names, "
                        "e.g. H2O,CH4,NH3")
    g.add_argument("--frames-per-molecule", type=int, default=20, help="default 20")
    g.add_argument("--temperature", type=float, default=300.0,
                   help="K: Gaussian displacements of σ = sqrt(k_B T / k), k = 30 eV/Å² (default 300)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.add_argument("--out", required=True, help="output .npz (read it with jaxrel.data.read_molecules)")
    g.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    g.set_defaults(func=_generate_xtb)

    p = sub.add_parser("report", help="HTML report with figures of a 'jaxrel explain' folder")
    p.add_argument("--explained", required=True, help="folder written by 'jaxrel explain'")
    p.add_argument("--out", help="folder for report.html and figures/ (default: --explained)")
    p.add_argument("--data", help="data file (default: the one recorded by explain); a "
                                  "'jaxrel generate noble-gas' file adds the recovery of the exact terms")
    p.add_argument("--model", help="the explained model's folder: adds the chemistry section (locality of the "
                                   "relevance; per-atom quantities against the data's partial charges, e.g. of "
                                   "'jaxrel generate xtb')")
    p.add_argument("--chempot", help="a folder written by 'jaxrel chempot': adds its figures")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=_report)

    p = sub.add_parser("quickstart", help="generate liquid argon, train SchNet, explain held-out frames, "
                                          "compare with the exact physics, write report.html")
    p.add_argument("--out", default=DEFAULT_RUN_DIR)
    p.add_argument("--minutes", type=float, default=4.0, help="training time (default 4)")
    p.add_argument("--frames", type=int, default=200, help="training frames (default 200)")
    p.add_argument("--explain-frames", type=int, default=8, help="held-out frames to explain (default 8)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=_quickstart)

    p = sub.add_parser("md", help="molecular dynamics with a trained model, then stability metrics "
                                  "(Fu et al. 2023) against the data")
    p.add_argument("--model", required=True, help="model folder written by train (OUT/model)")
    p.add_argument("--data", required=True, help="frames of the system: the start frame and the "
                                                 "reference for h(r) / RDF and bond lengths")
    p.add_argument("--molecule", help=MOLECULE_HELP)
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
    p.add_argument("--skin", type=float, default=None,
                   help="Å: Verlet skin of the neighbour list, which holds the pairs within cutoff + skin and is "
                        "rebuilt only when an atom has moved more than skin/2 (same trajectory; 0 rebuilds it at "
                        "every step; default 0.5 in an orthorhombic box where the O(n) cell list applies, else 0)")
    p.add_argument("--devices", type=int, metavar="N",
                   help="shard the replicas over the first N devices (default: JAX's default device); on a CPU "
                        "XLA_FLAGS=--xla_force_host_platform_device_count=N gives N host devices")
    p.add_argument("--friction", type=float, default=1.0, help="Langevin friction, 1/ps (default 1)")
    p.add_argument("--tau", type=float, default=100.0, help="Nosé–Hoover time constant, fs (default 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mass", help="amu: one mass for every atom or bead (e.g. 18.015), or Z:M,Z:M per species id "
                                  "(e.g. 1:18.015,2:16.043); default: the data's masses (the shared CG water and "
                                  "methane sets give their bead masses), else the elements' standard masses; "
                                  "required for other coarse-grained data")
    p.add_argument("--max-temperature", type=float,
                   help="K: a replica hotter than this is unstable (default 10 × --temperature); in nve and "
                        "nvt-nh only if its conserved energy also moved by more than half the kinetic energy "
                        "it gained")
    p.add_argument("--explain-every", type=int, metavar="K",
                   help="steps: every K steps (a positive multiple of --log-every; the initial frame included) "
                        "explain every stable replica by GNN-LRP (GI rule, Schnake et al. 2022): its body-order "
                        "totals and residual (eV) go to explain.csv, its top pair terms (Å, eV) to "
                        "explain_pairs.csv, and their change before each replica's instability to stability.json "
                        "(default: no explanation; it costs MD speed, see benchmarks/md_explain_overhead.py)")
    p.add_argument("--explain-order", type=int, metavar="N",
                   help="with --explain-every: the highest body order explained, 1 to n_interactions + 1; higher "
                        "orders are summed in the residual (default 2)")
    p.add_argument("--explain-top", type=int, metavar="M",
                   help="with --explain-every: 2-body terms of largest |relevance| (eV) kept per record and "
                        "replica (default 5)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--out", required=True,
                   help="folder for trajectory.extxyz (replica 0; trajectory_r<k>.extxyz for replica k), "
                        "thermo.csv, restart.npz and stability.json (and explain.csv, explain_pairs.csv), "
                        "written after every block")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    p.add_argument("--restart", action="store_true",
                   help="continue the run in --out (interrupted, or finished and given a longer --time) from "
                        "its last block; every other option must be the run's")
    p.set_defaults(func=_md)

    p = sub.add_parser("chempot", help="local chemical potential (Schütt et al. 2018): the atomwise energy of a "
                                       "probe atom on a grid around a molecule, minus the isolated probe's")
    p.add_argument("--model", required=True, help="model folder written by train (OUT/model)")
    p.add_argument("--data", required=True, help="frames of a molecule in free space (no periodic cell)")
    p.add_argument("--molecule", help=MOLECULE_HELP)
    p.add_argument("--frame", type=int, default=0, help="the frame to probe (default 0)")
    p.add_argument("--probe", required=True, help="probe species: element symbol or atomic number (e.g. H or 1); "
                                                  "one the model was trained on")
    p.add_argument("--spacing", type=float, default=0.25, help="grid step, Å (default 0.25)")
    p.add_argument("--padding", type=float, default=3.0,
                   help="margin around the molecule's bounding box, Å (default 3)")
    p.add_argument("--out", required=True, help="folder for chempot_<probe>.cube (values in eV), "
                                                "chempot_<probe>_slice.png, chempot_<probe>_iso.png and chempot.json")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=_chempot)
    return parser


def _md(args) -> dict:
    from jaxrel.md import parse_masses, run_md

    explain = {k: v for k, v in (("explain_order", args.explain_order), ("explain_top", args.explain_top))
               if v is not None}
    if explain and args.explain_every is None:
        raise ValueError(f"{' and '.join('--' + k.replace('_', '-') for k in explain)} only apply with "
                         "--explain-every K; pass it too, or drop them")
    return run_md(args.model, args.data, args.out, molecule=args.molecule, frame=args.frame, ensemble=args.ensemble,
                  temperature_K=args.temperature, dt_fs=args.dt, time_ps=args.time, replicas=args.replicas,
                  log_every=args.log_every, friction_per_ps=args.friction, tau_fs=args.tau, seed=args.seed,
                  max_temperature_K=args.max_temperature,
                  masses=None if args.mass is None else parse_masses(args.mass),
                  explain_every=args.explain_every, **explain, skin=args.skin, n_devices=args.devices,
                  overwrite=args.overwrite, restart=args.restart, progress=not args.quiet)


def _chempot(args) -> dict:
    from jaxrel.analysis.chempot import FILES, check_inputs, local_chemical_potential, write_chemical_potential
    from jaxrel.checkpoint import load_checkpoint
    from jaxrel.data import read_frames
    from jaxrel.files import prepare_output

    potential, params, _ = load_checkpoint(args.model)
    frames = read_frames(args.data, molecule=args.molecule)
    positions, cell = frames.geometry(args.frame)
    options = {"spacing": args.spacing, "padding": args.padding, "cell": cell}
    check_inputs(potential, positions, frames.species, args.probe, **options)
    out = prepare_output(args.out, FILES, overwrite=args.overwrite)
    result = local_chemical_potential(potential, params, positions, frames.species, args.probe, **options)
    paths = write_chemical_potential(result, out, {"model": str(args.model), "data": str(args.data),
                                                   "molecule": args.molecule, "frame": args.frame,
                                                   "padding_A": args.padding})
    summary = result.summary()
    return {"out": str(out), "probe": summary["probe_symbol"], "grid_shape": summary["grid_shape"],
            "seconds": round(result.seconds, 2), "min_phi_eV": summary["min"]["phi_eV"],
            "max_phi_eV": summary["max"]["phi_eV"], "files": [p.name for p in paths.values()]}


def _float64(args) -> bool:
    """Whether the command trains or loads a float64 model (JAX must then run in x64)."""
    if getattr(args, "dtype", None) == "float64":
        return True
    model = Path(getattr(args, "model", None) or "")
    if model.name == "" or not model.is_dir():
        return False
    config = model / "config.json"
    if (model / "ensemble.json").is_file():
        try:
            config = model / json.loads((model / "ensemble.json").read_text())["members"][0] / "config.json"
        except (ValueError, KeyError, IndexError, TypeError, OSError):
            return False      # the command itself reports the corrupt ensemble
    try:
        return json.loads(config.read_text())["model"]["dtype"] == "float64"
    except (ValueError, KeyError, TypeError, OSError):
        return False          # the command itself reports the missing or corrupt checkpoint


def main(argv: list[str] | None = None) -> int:
    # jax_md's neighbour lists scatter int64 into int32 arrays; harmless, and not the user's doing.
    warnings.filterwarnings("ignore", message="scatter inputs have incompatible types", category=FutureWarning)
    # jax_md asks for float64 sums in float32 runs; jax truncates them to float32 as intended.
    warnings.filterwarnings("ignore", message="Explicitly requested dtype float64", category=UserWarning)
    args = build_parser().parse_args(argv)
    if _float64(args):
        import jax

        jax.config.update("jax_enable_x64", True)
    try:
        result = args.func(args)
    except (ValueError, OSError, FloatingPointError) as err:
        print(f"jaxrel {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        print(f"jaxrel {args.command}: interrupted{': ' + str(err) if str(err) else ''}", file=sys.stderr)
        return 130
    if args.command != "quickstart":
        print(json.dumps(jsonable(result), indent=2, allow_nan=False))
    return 130 if isinstance(result, dict) and result.get("interrupted") else 0


if __name__ == "__main__":
    sys.exit(main())
