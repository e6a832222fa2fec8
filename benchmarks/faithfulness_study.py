"""Which decomposition recovers the physics: the model's MBE and GNN-LRP rules on liquids with exact terms.

For each liquid (64 atoms; Lennard-Jones + Axilrod–Teller–Muto from :mod:`jaxrel.data.noble_gas`):
``Ar``, ``Ar-null`` (argon without ATM: the null test), ``Kr`` and the ``ArKr`` mixture, 200
training frames and ``--heldout`` held-out frames of an independent trajectory; for each
model and seed: train for ``--minutes`` (energy and forces, zero species energies), then
audit the held-out frames up to 3-body terms (:func:`jaxrel.analysis.faithfulness.run_audit`:
the MBE, and GI, LRP-ε, LRP-γ for message-passing models) against the exact terms.

Models: ``schnet-16x2``, ``schnet-32x2``, ``painn-16x2``, ``painn-32x2`` (features ×
interactions) and ``bodyordered-16`` (the explicitly 2 + 3-body network, explained by its
MBE, which equals its own terms). Smaller networks decompose better, according to Uhlig,
Tovey and Holm 2024 (arXiv:2403.00377); the seeds say whether that survives the spread.

Results: benchmarks/results/faithfulness_study_<backend>.json (machine, device, date,
every run and the mean ± std over seeds) and benchmarks/results/faithfulness_study/*.png.
Finished runs are cached in ``--out`` (row.json per run), so the study resumes.

    python benchmarks/faithfulness_study.py [--minutes 3] [--seeds 3] [--liquids Ar,Ar-null,Kr,ArKr]
        [--models schnet-16x2,schnet-32x2,painn-16x2,painn-32x2,bodyordered-16] [--out runs/faithfulness_study]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_rmd17 import machine  # noqa: E402

from jaxrel.analysis.faithfulness import AUDIT_RULES, run_audit  # noqa: E402
from jaxrel.analysis.recovery import load_ground_truth  # noqa: E402
from jaxrel.analysis.write import jsonable  # noqa: E402
from jaxrel.checkpoint import load_checkpoint  # noqa: E402
from jaxrel.data import read_frames  # noqa: E402
from jaxrel.data.noble_gas import generate_noble_gas, save_noble_gas  # noqa: E402
from jaxrel.train import train_potential  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LIQUIDS = {"Ar": ("Ar", True), "Ar-null": ("Ar", False), "Kr": ("Kr", True), "ArKr": ("ArKr", True)}
MODELS = {"schnet-16x2": ("schnet", 16, 2), "schnet-32x2": ("schnet", 32, 2), "painn-16x2": ("painn", 16, 2),
          "painn-32x2": ("painn", 32, 2), "bodyordered-16": ("bodyordered", 16, 1)}


def data_files(work: Path, liquid: str, heldout: int) -> tuple[Path, Path]:
    """Training (200 frames, seed 0) and held-out (seed 1) files of one liquid, generated once."""
    species, three_body = LIQUIDS[liquid]
    paths = []
    for split, frames, seed in (("train", 200, 0), ("heldout", heldout, 1)):
        path = work / f"{liquid}_{split}.npz"
        if not path.exists():
            save_noble_gas(generate_noble_gas(species, n_atoms=64, n_frames=frames, seed=seed,
                                              three_body=three_body), path)
        paths.append(path)
    return paths[0], paths[1]


def run(work: Path, train: Path, heldout: Path, model: str, seed: int, minutes: float) -> dict:
    """Train one model, audit the held-out frames; cached in work/row.json."""
    cached = work / "row.json"
    if cached.exists():
        return json.loads(cached.read_text())
    arch, features, interactions = MODELS[model]
    start = time.perf_counter()
    metrics = train_potential(train, work, test_data=heldout, model=arch, cutoff=float(np.load(train)["cutoff"]),
                              n_features=features, n_interactions=interactions, minutes=minutes, batch_size=8,
                              energy_weight=0.5, forces_weight=0.5, species_energies="zero", seed=seed,
                              progress=False)
    trained = time.perf_counter() - start
    potential, params, _ = load_checkpoint(work / "model")
    rules = () if arch == "bodyordered" else AUDIT_RULES
    audit = run_audit(potential, params, read_frames(heldout), max_order=3, rules=rules,
                      truth=load_ground_truth(heldout), model_path=work / "model", data_path=heldout)
    summary = jsonable(audit.summary())
    row = {"model": model, "seed": seed, "minutes": minutes, "test": metrics["test"],
           "epochs": metrics["training"].get("epochs"), "train_seconds": round(trained, 1),
           "audit_seconds": round(time.perf_counter() - start - trained, 1),
           "versus_exact": summary["versus_exact"], "agreement": summary["agreement"],
           "verdict": audit.verdict}
    cached.write_text(json.dumps(row))
    return row


def aggregate(rows: list[dict]) -> dict:
    """Mean and standard deviation over seeds of each method's scores."""
    out = {}
    for method in rows[0]["versus_exact"]:
        scores = [r["versus_exact"][method] for r in rows]
        pair = [max(s["pair_curve_rms_over_epsilon"].values()) for s in scores]
        three = [s["three_body_total_eV"] for s in scores]
        error = [s["three_body_error"] for s in scores]
        out[method] = {"pair_curve_rms_over_epsilon": [float(np.mean(pair)), float(np.std(pair))],
                       "three_body_total_eV": [float(np.mean(three)), float(np.std(three))],
                       "exact_three_body_total_eV": scores[0]["exact_three_body_total_eV"],
                       "three_body_error": [float(np.mean(error)), float(np.std(error))],
                       "meets_goals": sum(bool(s["meets_goals"]) for s in scores), "n_seeds": len(scores)}
    return out


def plot(result: dict, path: Path) -> None:
    """3-body total per frame by model and method (mean ± std over seeds) beside the exact one."""
    liquids = list(result["aggregate"])
    fig = Figure(figsize=(5.0 * len(liquids), 4.2))
    for k, liquid in enumerate(liquids):
        ax = fig.add_subplot(1, len(liquids), k + 1)
        labels, means, spreads, colours = [], [], [], []
        for model, methods in result["aggregate"][liquid].items():
            for i, (method, s) in enumerate(methods.items()):
                labels.append(f"{model}\n{method}")
                means.append(s["three_body_total_eV"][0])
                spreads.append(s["three_body_total_eV"][1])
                colours.append(f"C{i}")
                exact = s["exact_three_body_total_eV"]
        ax.bar(np.arange(len(labels)), means, yerr=spreads, color=colours, capsize=2)
        ax.axhline(exact, color="k", ls="--", lw=1.2, label=f"exact {exact:+.3f} eV")
        ax.axhline(0.0, color="0.6", lw=0.8)
        ax.set_xticks(np.arange(len(labels)), labels, rotation=90, fontsize=7)
        ax.set_ylabel("Σ 3-body per frame (eV)")
        ax.set_title(liquid)
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=120, bbox_inches="tight")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="training minutes per model")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--heldout", type=int, default=4, help="held-out frames audited per liquid")
    parser.add_argument("--liquids", default=",".join(LIQUIDS))
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--out", default=str(ROOT / "runs" / "faithfulness_study"))
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    liquids, models = args.liquids.split(","), args.models.split(",")
    unknown = [x for x in liquids if x not in LIQUIDS] + [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"unknown liquid or model: {', '.join(unknown)}; known: {', '.join([*LIQUIDS, *MODELS])}")
    work, results = Path(args.out), Path(args.results)
    work.mkdir(parents=True, exist_ok=True)
    (results / "faithfulness_study").mkdir(parents=True, exist_ok=True)
    result = {"machine": machine(), "command": "python benchmarks/faithfulness_study.py " + " ".join(sys.argv[1:]),
              "minutes_per_model": args.minutes, "seeds": args.seeds,
              "system": "64 atoms, LJ + ATM (Ar-null: LJ only), 200 training frames, held-out frames from an "
                        "independent trajectory; zero species energies",
              "runs": {}, "aggregate": {}}
    for liquid in liquids:
        train, heldout = data_files(work, liquid, args.heldout)
        result["runs"][liquid], result["aggregate"][liquid] = {}, {}
        for model in models:
            rows = [run(work / f"{liquid}_{model}_seed{seed}", train, heldout, model, seed, args.minutes)
                    for seed in range(args.seeds)]
            result["runs"][liquid][model] = rows
            result["aggregate"][liquid][model] = aggregate(rows)
            print(json.dumps({f"{liquid} {model}": result["aggregate"][liquid][model]}), flush=True)
    plot(result, results / "faithfulness_study" / "three_body_totals.png")
    path = results / f"faithfulness_study_{result['machine']['backend']}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
