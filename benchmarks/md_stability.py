"""MD stability of the rMD17-ethanol SchNet, PaiNN and NequIP models, after Fu et al. 2023.

Protocol of Fu et al., "Forces are not Enough", TMLR 2023 (arXiv:2210.07237) for MD17:
NVT with a Nosé–Hoover thermostat at 500 K, time step 0.5 fs, thermostat time 10 fs
(their ``ttime`` of 20 steps), one frame every 0.05 ps, unstable when a covalent bond
deviates by more than 0.5 Å from its mean length in the reference data, h(r) error over
the frames before instability against the reference data. Differences, stated in the
JSON: jaxrel's thermostat is a 5-link Nosé–Hoover chain (JAX MD, Martyna et al. 1996)
rather than a single thermostat; the run length is ``--time`` (default 50 ps; Fu et al.
ran 300 ps); ``--replicas`` starting frames (every 250th frame of the rMD17 test file)
run vmapped in one simulation with Maxwell–Boltzmann velocities (seed = replica index);
the reference data are the 2000 rMD17 frames (train_01 + test_01), themselves sampled from
the 500 K MD17 trajectory. The driver also stops a replica on non-finite forces or a
temperature above 5000 K. A diagnostic outside Fu et al.'s protocol records, per
replica, the non-bonded pair that came closest relative to its minimum in the reference
(bond criteria miss e.g. two hydrogens collapsing onto each other).

    python benchmarks/md_stability.py [--time 50] [--replicas 4] [--models schnet painn nequip]

Needs the trained models runs/bench_{schnet,painn,nequip}_ethanol/model (made by
``python benchmarks/train_rmd17.py --minutes 30``) and rMD17 under $JAXREL_DATA (default
../shared/data). Writes benchmarks/results/md_stability_ethanol_<backend>.json and, per
model, the thermo log (CSV) and each replica's trajectory (extended XYZ) under runs/.
Models measured earlier under the same protocol stay in the JSON (each model's entry has
its own machine and date); a different protocol replaces the file, and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from jaxrel.checkpoint import load_checkpoint
from jaxrel.data import read_frames
from jaxrel.md import MDConfig, simulate, write_thermo, write_trajectory
from jaxrel.stability import bonds_from_reference, stability_report

ROOT = Path(__file__).resolve().parents[1]

from train_rmd17 import keep_earlier, machine  # noqa: E402  (benchmarks/ is on sys.path when run as a script)


def data_dir() -> Path:
    """The shared data folder: $JAXREL_DATA or ../shared/data; SystemExit if absent."""
    path = Path(os.environ.get("JAXREL_DATA", ROOT.parent / "shared" / "data"))
    if not path.is_dir():
        raise SystemExit(f"shared data not found at {path}; set JAXREL_DATA to the folder "
                         "holding rmd17/ and water_dft/")
    return path


def load_trained(model: str, molecule: str = "ethanol"):
    """``(potential, params, metrics)`` of runs/bench_<model>_<molecule>; SystemExit if missing."""
    run = ROOT / "runs" / f"bench_{model}_{molecule}"
    if not (run / "model" / "config.json").is_file():
        raise SystemExit(f"no trained {model} model at {run}/model; train it first with "
                         f"'python benchmarks/train_rmd17.py --minutes 30 --models {model} "
                         f"--molecule {molecule}'")
    potential, params, _ = load_checkpoint(run / "model")
    metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else {}
    return potential, params, metrics


def closest_nonbonded_approach(positions, time_ps, reference, species, collapse=0.8) -> dict:
    """The non-bonded atom pair that came closest relative to its reference minimum.

    A diagnostic beyond Fu et al.'s bond criterion, which only watches bonded pairs:
    ratio r_ij / min_ref r_ij over the frames, minimised over non-bonded pairs (bonds as in
    :func:`jaxrel.stability.bonds_from_reference`), and the first time any ratio fell
    below ``collapse``.

    Args:
        positions: (n_frames, n_atoms, 3) Å of one replica; time_ps: (n_frames,) ps;
        reference: (n_ref, n_atoms, 3) Å; species: (n_atoms,) atomic numbers.
    """
    bonds, _ = bonds_from_reference(reference, species)
    i, j = np.triu_indices(len(species), k=1)
    keep = ~np.isin(i * len(species) + j, bonds[:, 0] * len(species) + bonds[:, 1])
    i, j = i[keep], j[keep]
    floor = np.linalg.norm(reference[:, j] - reference[:, i], axis=-1).min(axis=0)
    ratio = np.linalg.norm(positions[:, j] - positions[:, i], axis=-1) / floor
    frame, pair = np.unravel_index(np.argmin(ratio), ratio.shape)
    below = np.flatnonzero((ratio < collapse).any(axis=1))
    return {"atoms": [int(i[pair]), int(j[pair])],
            "species": [int(species[i[pair]]), int(species[j[pair]])],
            "distance_A": float(ratio[frame, pair] * floor[pair]),
            "reference_minimum_A": float(floor[pair]), "time_ps": float(time_ps[frame]),
            f"first_time_below_{collapse}_of_reference_minimum_ps":
                float(time_ps[below[0]]) if below.size else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time", type=float, default=50.0, help="simulated time per replica, ps")
    parser.add_argument("--replicas", type=int, default=4, help="starting frames run vmapped")
    parser.add_argument("--models", nargs="+", default=["schnet", "painn"])
    parser.add_argument("--temperature", type=float, default=500.0, help="K")
    parser.add_argument("--dt", type=float, default=0.5, help="time step, fs")
    parser.add_argument("--tau", type=float, default=10.0, help="Nosé–Hoover time constant, fs")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    rmd17 = data_dir() / "rmd17"
    test = read_frames(rmd17 / "rmd17_ethanol_test_01.npz")
    train = read_frames(rmd17 / "rmd17_ethanol_train_01.npz")
    reference = np.concatenate([train.positions, test.positions])
    starts = list(range(0, 250 * args.replicas, 250))
    if starts[-1] >= len(test):
        raise SystemExit(f"--replicas {args.replicas} needs more than the {len(test)} test frames")
    n_steps = round(args.time * 1000 / args.dt)
    log_every = round(50 / args.dt)  # one frame per 0.05 ps, as Fu et al.
    config = MDConfig(ensemble="nvt-nh", dt_fs=args.dt, temperature_K=args.temperature,
                      n_steps=n_steps, log_every=log_every, tau_fs=args.tau, seed=0)
    result = {
        "benchmark": "md_stability", "system": "rMD17 ethanol (9 atoms, free space)",
        "command": "python benchmarks/md_stability.py " + " ".join(
            ["--time", str(args.time), "--replicas", str(args.replicas), "--models", *args.models]),
        "machine": machine(),
        "protocol": {
            "reference": "Fu et al. 2023, arXiv:2210.07237 (MD17: Nosé–Hoover NVT 500 K, 0.5 fs, "
                         "bond deviation > 0.5 Å = unstable, h(r) MAE)",
            "ensemble": config.ensemble,
            "thermostat": "Nosé–Hoover chain of 5 (jax_md.simulate.nvt_nose_hoover); Fu et al. "
                          "used a single Nosé–Hoover thermostat",
            "temperature_K": config.temperature_K, "dt_fs": config.dt_fs, "tau_fs": config.tau_fs,
            "time_ps": n_steps * config.dt_fs / 1000, "n_steps": n_steps,
            "frame_interval_ps": log_every * config.dt_fs / 1000,
            "driver_temperature_limit_K": config.temperature_limit_K,
            "replicas": args.replicas, "starting_frames": f"rmd17_ethanol_test_01 frames {starts}",
            "initial_velocities": "Maxwell–Boltzmann at the temperature, seed = replica index",
            "bond_threshold_A": 0.5, "bonds": "r < 1.25 (r_cov,i + r_cov,j) in the first reference "
                                              "frame; reference length = mean over the reference",
            "hr": {"r_max_A": 10.0, "n_bins": 500,
                   "error": "∫|h_sim − h_ref| dr over the frames before instability (dimensionless, "
                            "0..2), mean over replicas"},
            "reference_data": f"rMD17 ethanol train_01 + test_01 ({len(reference)} frames)",
        },
        "models": {},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for model in args.models:
        potential, params, metrics = load_trained(model)
        load_before = os.getloadavg()[0]
        tic = time.perf_counter()
        traj = simulate(potential, params, test.positions[starts], test.species, config=config,
                        progress=False)
        wall = time.perf_counter() - tic
        load = os.getloadavg()[0]
        report = stability_report(traj, reference, test.species, molecule=True,
                                  ensemble=config.ensemble)
        run = ROOT / "runs" / f"md_stability_{model}_ethanol"
        run.mkdir(parents=True, exist_ok=True)
        write_thermo(traj, run / "thermo.csv")
        for r in range(args.replicas):
            write_trajectory(traj, run / f"replica{r}.extxyz", replica=r)
        stable = traj.stable_frames(0)
        closest = [closest_nonbonded_approach(traj.positions[r, traj.stable_frames(r)],
                                              traj.time_ps[traj.stable_frames(r)], reference,
                                              test.species) for r in range(args.replicas)]
        result["models"][model] = {
            "machine": result["machine"], "command": result["command"],
            "checkpoint": f"runs/bench_{model}_ethanol/model",
            "test_forces_mae_meV_per_A": metrics.get("test", {}).get("forces_mae_meV_per_A"),
            **report,
            "replica_steps_per_second": report["steps_per_second"] * args.replicas,
            "wall_seconds": wall,
            "mean_temperature_K_replica0": float(traj.temperature_K[0, stable].mean()),
            "n_neighbour_reallocations": traj.n_reallocations,
            "load_average_1min_before_after": [load_before, load],
            "closest_nonbonded_approach_per_replica": closest,
        }
        print(f"{model}: stable={report['stable']} t_unstable={report['time_to_instability_ps']} ps "
              f"h(r) MAE={report['hr_mae']} {report['steps_per_second']:.0f} steps/s "
              f"wall {wall:.0f} s")
    path = out / f"md_stability_ethanol_{result['machine']['backend']}.json"
    result = keep_earlier(path, result, "models", ("protocol",))
    path.write_text(json.dumps(result, indent=2, allow_nan=False, ensure_ascii=False))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
