"""Which decomposition recovers the physics: the model's MBE and GNN-LRP rules on liquids with exact terms.

For each liquid (64 atoms; Lennard-Jones + Axilrod–Teller–Muto from :mod:`jaxrel.data.noble_gas`):
``Ar``, ``Ar-null`` (argon without ATM: the null test), ``Kr`` and the ``ArKr`` mixture, 200
training frames and ``--heldout`` held-out frames of an independent trajectory; for each
model: an ensemble of ``--seeds`` seeds trained in one vmapped run on the same batches
(``jaxrel train --seeds``; ``--minutes`` per member, energy and forces, zero species
energies), then the ensemble audit of the held-out frames up to 3-body terms
(:func:`jaxrel.analysis.faithfulness.run_ensemble_audit`: the MBE, and GI, LRP-ε, LRP-γ for
message-passing models, each seed scored against the exact terms).

Models: ``schnet-16x2``, ``schnet-32x2``, ``painn-16x2``, ``painn-32x2`` (features ×
interactions) and ``bodyordered-16`` (the explicitly 2 + 3-body network, explained by its
MBE, which equals its own terms). Smaller networks decompose better, according to Uhlig,
Tovey and Holm 2024 (arXiv:2403.00377); the seeds say whether that survives the spread.

Results: benchmarks/results/faithfulness_study_<backend>.json (machine, device, date,
every seed's scores and the mean ± std over seeds) and
benchmarks/results/faithfulness_study/*.png. Finished ensembles are cached in ``--out``
(row.json per ensemble), so the study resumes.

    python benchmarks/faithfulness_study.py [--minutes 1.5] [--seeds 3] [--liquids Ar,Ar-null,Kr,ArKr]
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

from jaxrel.analysis.faithfulness import AUDIT_RULES, run_audit, run_ensemble_audit  # noqa: E402
from jaxrel.analysis.recovery import load_ground_truth  # noqa: E402
from jaxrel.checkpoint import load_models  # noqa: E402
from jaxrel.data import read_frames  # noqa: E402
from jaxrel.data.noble_gas import generate_noble_gas, save_noble_gas  # noqa: E402
from jaxrel.files import jsonable, write_json  # noqa: E402
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


def run(work: Path, train: Path, heldout: Path, model: str, seeds: int, minutes: float) -> dict:
    """Train one ensemble, audit the held-out frames; cached in work/row.json."""
    cached = work / "row.json"
    if cached.exists():
        return json.loads(cached.read_text())
    arch, features, interactions = MODELS[model]
    start = time.perf_counter()
    metrics = train_potential(train, work, test_data=heldout, model=arch, cutoff=float(np.load(train)["cutoff"]),
                              n_features=features, n_interactions=interactions, minutes=minutes * seeds,
                              batch_size=8, energy_weight=0.5, forces_weight=0.5, species_energies="zero",
                              seeds=seeds, overwrite=True, progress=False)  # an unfinished run is redone
    trained = time.perf_counter() - start
    members = load_models(work if seeds > 1 else work / "model")
    rules = () if arch == "bodyordered" else AUDIT_RULES
    options = dict(max_order=3, rules=rules, model_path=work, data_path=heldout)
    truth = load_ground_truth(heldout)
    if seeds > 1:
        audit = run_ensemble_audit([(p, q) for p, q, _ in members], [m["seed"] for *_, m in members],
                                   read_frames(heldout), truth=truth, **options)
    else:
        audit = run_audit(*members[0][:2], read_frames(heldout), truth=truth, **options)
    summary = jsonable(audit.summary())
    tests = metrics["members"].values() if seeds > 1 else [metrics]
    row = {"model": model, "seeds": seeds, "minutes_per_member": minutes,
           "test_forces_mae_meV_per_A": [m["test"]["forces_mae_meV_per_A"] for m in tests],
           "test_energy_mae_meV_per_atom": [m["test"]["energy_mae_meV"] / 64 for m in tests],
           "epochs": metrics["training"]["epochs"], "train_seconds": round(trained, 1),
           "audit_seconds": round(time.perf_counter() - start - trained, 1),
           "versus_exact": summary["versus_exact"], "seed_scores": summary.get("seeds"),
           "agreement": summary["agreement"], "verdict": audit.verdict}
    write_json(cached, row)
    return row


def aggregate(row: dict) -> dict:
    """Mean and standard deviation over the seeds of each method's scores against the exact terms."""
    out = {}
    for method, mean_scores in row["versus_exact"].items():
        by_seed = (row["seed_scores"]["methods"][method]["versus_exact_by_seed"] if row["seed_scores"]
                   else {"pair_curve_rms_over_epsilon": [max(mean_scores["pair_curve_rms_over_epsilon"].values())],
                         "three_body_total_eV": [mean_scores["three_body_total_eV"]],
                         "three_body_error": [mean_scores["three_body_error"]],
                         "meets_goals": [mean_scores["meets_goals"]]})

        def stats(key):
            values = np.asarray(by_seed[key], float)
            return [float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0]

        out[method] = {"pair_curve_rms_over_epsilon": stats("pair_curve_rms_over_epsilon"),
                       "three_body_total_eV": stats("three_body_total_eV"),
                       "exact_three_body_total_eV": mean_scores["exact_three_body_total_eV"],
                       "three_body_error": stats("three_body_error"),
                       "seeds_meeting_goals": int(sum(by_seed["meets_goals"])), "n_seeds": row["seeds"],
                       "ensemble_mean_meets_goals": mean_scores["meets_goals"]}
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
    parser.add_argument("--minutes", type=float, default=1.5, help="training minutes per ensemble member")
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
              "minutes_per_member": args.minutes, "seeds": args.seeds,
              "system": "64 atoms, LJ + ATM (Ar-null: LJ only), 200 training frames, held-out frames from an "
                        "independent trajectory; zero species energies",
              "runs": {}, "aggregate": {}}
    for liquid in liquids:
        train, heldout = data_files(work, liquid, args.heldout)
        result["runs"][liquid], result["aggregate"][liquid] = {}, {}
        for model in models:
            row = run(work / f"{liquid}_{model}_seeds{args.seeds}", train, heldout, model, args.seeds, args.minutes)
            result["runs"][liquid][model] = row
            result["aggregate"][liquid][model] = aggregate(row)
            print(json.dumps({f"{liquid} {model}": result["aggregate"][liquid][model]}), flush=True)
    plot(result, results / "faithfulness_study" / "three_body_totals.png")
    path = results / f"faithfulness_study_{result['machine']['backend']}.json"
    write_json(path, result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
