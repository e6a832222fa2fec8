"""What SchNet's relevance recovers of liquid argon's exact physics, and how model size matters.

1. Recovery with and without the three-body term (null test): liquid argon, 64 atoms,
   Lennard-Jones + Axilrod–Teller–Muto (or LJ only), 200 training frames and 8 held-out
   frames from an independent trajectory; SchNet (32 features, 2 interactions) trained
   for ``--minutes``; the held-out frames explained up to 3-body terms and matched term
   by term with the exact pair and triplet energies (:mod:`jaxrel.analysis.recovery`).
2. Model size: SchNet with (features, interactions) = (8, 1), (32, 2), (64, 3), same data,
   trained for the same wall time (``--minutes``; larger models then see fewer epochs) and
   for the same number of epochs (``--epochs``); the model's atomwise energies against the
   exact local energies (Uhlig, Tovey, Holm 2024, arXiv:2403.00377, found that smaller
   networks reproduce local energies better).

Species energies are zero (isolated noble-gas atoms have zero energy), so the network has
to represent the whole energy. Results: benchmarks/results/recovery_study_<backend>.json,
figures and the two reports under benchmarks/results/recovery_study/.

    python benchmarks/recovery_study.py [--minutes 4] [--out runs/recovery_study]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_rmd17 import machine  # noqa: E402

from jaxrel import explain  # noqa: E402
from jaxrel.analysis import build_report  # noqa: E402
from jaxrel.checkpoint import load_checkpoint  # noqa: E402
from jaxrel.data import read_frames  # noqa: E402
from jaxrel.data.noble_gas import generate_noble_gas, save_noble_gas  # noqa: E402
from jaxrel.files import jsonable, write_json  # noqa: E402
from jaxrel.train import train_potential  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SIZES = [(8, 1), (32, 2), (64, 3)]


def experiment(work: Path, data: Path, heldout: Path, features: int, interactions: int,
               budget: dict) -> dict:
    """Train (``budget``: {"minutes": m} or {"epochs": n}), explain the held-out frames
    (up to 3-body where T ≥ 2) and report. A finished run's result (work/row.json) is reused."""
    cached = work / "row.json"
    if cached.exists():
        return json.loads(cached.read_text())
    start = time.perf_counter()
    metrics = train_potential(data, work, test_data=heldout, model="schnet", cutoff=float(np.load(data)["cutoff"]),
                              n_features=features, n_interactions=interactions, energy_weight=0.5,
                              forces_weight=0.5, species_energies="zero", overwrite=True, progress=False,
                              **budget)  # an unfinished run (no row.json) is redone
    order = min(3, interactions + 1)
    potential, params, _ = load_checkpoint(work / "model")
    explanation = explain(potential, params, read_frames(heldout), max_order=order, model_path=work / "model",
                          data_path=heldout)
    explanation.save(work / "explained")
    recovery = jsonable(build_report(explanation, work / "explained")["recovery"].summary())
    row = {"features": features, "interactions": interactions, "max_order": order, "budget": budget,
           "test": metrics["test"], "training": metrics["training"],
           "atomwise_vs_local": recovery["atomwise"],
           "pairs": recovery["pairs"],
           "triplets": recovery.get("triplets"), "seconds": round(time.perf_counter() - start, 1)}
    write_json(cached, row)
    return row


def plot_sizes(arms: dict[str, list[dict]], path: Path) -> None:
    fig = Figure(figsize=(5.2, 3.8))
    ax = fig.add_subplot()
    for marker, (arm, rows) in zip("os", arms.items()):
        labels = [f"F{r['features']}×T{r['interactions']}" for r in rows]
        ax.plot(labels, [r["atomwise_vs_local"]["r2"] for r in rows], marker + "-", label=f"R², {arm}")
    ax.set_xlabel("SchNet size (features × interactions)")
    ax.set_ylabel("atomwise vs exact local energies")
    ax.legend()
    fig.savefig(path, dpi=120, bbox_inches="tight")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=4.0, help="training minutes per model")
    parser.add_argument("--epochs", type=int, default=20, help="epochs per model in the equal-epochs arm")
    parser.add_argument("--out", default=str(ROOT / "runs" / "recovery_study"))
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    work, results = Path(args.out), Path(args.results)
    figures = results / "recovery_study"
    figures.mkdir(parents=True, exist_ok=True)
    data = {}
    for name, three_body in (("lj_atm", True), ("lj_only", False)):
        for split, frames, seed in (("train", 200, 0), ("heldout", 8, 1)):
            path = work / f"argon_{name}_{split}.npz"
            if not path.exists():
                save_noble_gas(generate_noble_gas("Ar", n_atoms=64, n_frames=frames, seed=seed,
                                                  three_body=three_body), path)
            data[name, split] = path
    result = {"machine": machine(), "minutes_per_model": args.minutes,
              "command": f"python benchmarks/recovery_study.py --minutes {args.minutes}",
              "system": "liquid Ar, 64 atoms, 94.4 K, LJ + ATM (lj_atm) or LJ only (lj_only); "
                        "200 training frames, 8 held-out frames from an independent trajectory",
              "recovery": {}, "model_size": {f"{args.minutes} min each": [], f"{args.epochs} epochs each": []}}
    for name in ("lj_atm", "lj_only"):
        row = experiment(work / f"{name}_F32_T2", data[name, "train"], data[name, "heldout"], 32, 2,
                         {"minutes": args.minutes})
        result["recovery"][name] = row
        for png in (work / f"{name}_F32_T2" / "explained" / "figures").glob("recovery_*.png"):
            shutil.copy(png, figures / f"{name}_{png.name}")
        shutil.copy(work / f"{name}_F32_T2" / "explained" / "figures" / "pair_curves.png",
                    figures / f"{name}_pair_curves.png")
        print(json.dumps({name: {k: row[k] for k in ("test", "atomwise_vs_local")}}, indent=1), flush=True)
    for arm, budget, tag in ((f"{args.minutes} min each", {"minutes": args.minutes}, ""),
                             (f"{args.epochs} epochs each", {"epochs": args.epochs}, f"_{args.epochs}ep")):
        for features, interactions in SIZES:
            row = experiment(work / f"lj_atm_F{features}_T{interactions}{tag}", data["lj_atm", "train"],
                             data["lj_atm", "heldout"], features, interactions, budget)
            result["model_size"][arm].append(row)
            print(json.dumps({f"{arm}: F{features}xT{interactions}": row["atomwise_vs_local"]}), flush=True)
    plot_sizes(result["model_size"], figures / "model_size_atomwise.png")
    path = results / f"recovery_study_{result['machine']['backend']}.json"
    write_json(path, result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
