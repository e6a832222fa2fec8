"""Explain the rMD17 models of benchmarks/train_rmd17.py and build their reports.

For each model (SchNet, PaiNN, NequIP) and rule (GI, LRP-γ) runs :func:`jaxrel.explain` on every
10th frame of the test file (100 frames, up to 3-body terms) and builds its report, and
records the body-order shares, the interaction strength and decay length per element
pair, the strongest pair terms at bonded distance, and the time per frame in
benchmarks/results/explain_rmd17_<molecule>_<backend>.json. The pair-curve and decay
figures are copied to benchmarks/results/explain_rmd17/. Runs of other models measured earlier on
the same data and frames stay in the JSON.

    python benchmarks/explain_rmd17.py [--molecule ethanol] [--frames 0:1000:10]

Needs the trained models (runs/bench_<model>_<molecule>/model; make them with
``python benchmarks/train_rmd17.py``) and the data ($JAXREL_DATA or ../shared/data).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_rmd17 import keep_earlier, machine  # noqa: E402

from jaxrel import explain  # noqa: E402
from jaxrel.analysis import build_report  # noqa: E402
from jaxrel.checkpoint import load_checkpoint  # noqa: E402
from jaxrel.cli import _frame_range  # noqa: E402
from jaxrel.data.readers import read_frames  # noqa: E402
from jaxrel.files import write_json  # noqa: E402
from jaxrel.stability import bonds_from_reference  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--molecule", default="ethanol")
    parser.add_argument("--frames", default="0:1000:10")
    parser.add_argument("--models", nargs="+", default=["schnet", "painn"])
    parser.add_argument("--rules", nargs="+", default=["gi", "lrp-gamma"])
    args = parser.parse_args()
    data = Path(os.environ.get("JAXREL_DATA", ROOT.parent / "shared" / "data")) / "rmd17" / \
        f"rmd17_{args.molecule}_test_01.npz"
    figures = ROOT / "benchmarks" / "results" / "explain_rmd17"
    figures.mkdir(parents=True, exist_ok=True)
    frames = read_frames(data)
    bonds, _ = bonds_from_reference(frames.positions[0], frames.species)
    n_atoms = len(frames.species)
    bond_codes = bonds[:, 0] * n_atoms + bonds[:, 1]
    result = {"machine": machine(), "data": str(data), "frames": args.frames,
              "command": f"python benchmarks/explain_rmd17.py --molecule {args.molecule} --models "
              + " ".join(args.models), "runs": {}}
    for model in args.models:
        model_dir = ROOT / "runs" / f"bench_{model}_{args.molecule}" / "model"
        if not model_dir.is_dir():
            raise SystemExit(f"{model_dir} does not exist: train it with "
                             f"'python benchmarks/train_rmd17.py --models {model} --molecule {args.molecule}'")
        for rule in args.rules:
            out = ROOT / "runs" / f"explain_{args.molecule}_{model}_{rule}"
            potential, params, _ = load_checkpoint(model_dir)
            index = _frame_range(args.frames, len(frames))
            explanation = explain(potential, params, frames.select(np.array(index)), max_order=3, rules=rule,
                                  frame_index=index, model_path=model_dir, data_path=data)
            explanation.save(out)
            analysis = build_report(explanation, out)["analysis"]
            table = explanation.tables[2]
            bonded = np.isin(table.atoms[:, 0] * n_atoms + table.atoms[:, 1], bond_codes)
            magnitude = np.abs(table.relevance)
            shares = analysis["body_order_shares"]
            result["runs"][f"{model}/{rule}"] = {
                "machine": result["machine"],
                "abs_share": {k: v.pooled for k, v in shares.abs_share.items()},
                "energy_share": {k: v.pooled for k, v in shares.energy_share.items()},
                "mean_abs_R2_bonded_eV": float(magnitude[bonded].mean()),
                "mean_abs_R2_non_bonded_eV": float(magnitude[~bonded].mean()),
                "interaction_strength": {"-".join(map(str, k)): {"mean_abs_eV": v.mean_abs_eV,
                                                                 "decay_length_A": v.decay_length_A,
                                                                 "n_fit_bins": v.n_fit_bins}
                                         for k, v in analysis["interaction_strength"].items()},
                "max_abs_conservation_error_eV": float(np.abs(explanation.conservation_error).max()),
                "mean_seconds_per_frame": float(np.mean(explanation.seconds))}
            for name in ("pair_curves", "decay"):
                shutil.copy(out / "figures" / f"{name}.png", figures / f"{args.molecule}_{model}_{rule}_{name}.png")
            print(json.dumps({f"{model}/{rule}": result["runs"][f"{model}/{rule}"]["abs_share"]}), flush=True)
    path = ROOT / "benchmarks" / "results" / f"explain_rmd17_{args.molecule}_{result['machine']['backend']}.json"
    result = keep_earlier(path, result, "runs", ("data", "frames"))
    write_json(path, result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
