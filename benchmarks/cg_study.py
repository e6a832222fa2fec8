"""The study of Bonneau et al. 2024 (arXiv:2407.04526) on jaxrel's coarse-grained liquids.

For CG methane (105 K) and CG water (300 K), one bead per molecule (../shared/data/cg_*):

1. train a SchNet (32 features, 3 interactions, 5 Å) with the repulsive prior by force
   matching (``jaxrel train --energy-weight 0 --prior repulsive``), within a wall-clock budget;
2. run CG MD (Langevin NVT at the data's temperature, 2 fs, bead mass = molecule mass) and
   compare the RDF's first peak, the first-shell angle distribution and (water) the
   tetrahedral order q with the mapped all-atom reference (``jaxrel md``'s stability report);
3. explain held-out frames with GNN-LRP (GI, up to 3-body): mean 2-body relevance against
   distance beside g(r), mean 3-body relevance against the angle beside the angle
   distribution, body-order shares (per frame normalised, as the published study, and
   pooled over frames), interaction decay; with and without the prior;
4. (methane) explain the published GNN-LRP frame (``cg_methane_frame``) with the same model,
   beside the statistics of the training-set frames.

Writes ``benchmarks/results/cg_study_cpu.json`` and figures in ``benchmarks/results/cg_study/``.
Trained models and MD runs go to ``runs/cg_<system>_schnet`` and are reused unless
``--retrain`` / ``--rerun-md``.

    .venv/bin/python benchmarks/cg_study.py [--systems methane water] [--minutes 12] [--md-ps 100]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("JAXREL_DATA", ROOT.parent / "shared" / "data"))
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402

from jaxrel import explain  # noqa: E402
from jaxrel.analysis import body_order_shares  # noqa: E402
from jaxrel.analysis.write import write_analysis  # noqa: E402
from jaxrel.checkpoint import load_checkpoint  # noqa: E402
from jaxrel.cli import main as jaxrel_main  # noqa: E402
from jaxrel.data import read_frames, split_frames  # noqa: E402
from jaxrel.files import write_json  # noqa: E402
from jaxrel.md import run_md  # noqa: E402
from jaxrel.stability import ANGLE_BINS, shell_distributions  # noqa: E402

SYSTEMS = {
    "methane": {"data": "cg_methane/cg_methane_opls_105K.npz", "temperature_K": 105.0, "train": 800,
                "validation": 50, "rdf_peak_A": 3.95},
    "water": {"data": "cg_water/cg_water_tip3p_300K.npz", "temperature_K": 300.0, "train": 1200,
              "validation": 75, "rdf_peak_A": 2.76},
}
MODEL = ["--model", "schnet", "--cutoff", "5.0", "--features", "32", "--interactions", "3", "--rbf", "20",
         "--energy-weight", "0", "--forces-weight", "1", "--prior", "repulsive", "--batch-size", "8", "--lr", "1e-3",
         "--seed", "0"]
TETRAHEDRAL_DEG = 109.47


def train(system: str, settings: dict, run: Path, minutes: float, retrain: bool) -> dict:
    """Train (or reuse) the CG model; its metrics.json."""
    if retrain or not (run / "metrics.json").is_file():
        argv = ["train", "--data", str(DATA / settings["data"]), *MODEL, "--train", str(settings["train"]),
                "--validation", str(settings["validation"]), "--minutes", str(minutes), "--quiet",
                "--out", str(run), "--overwrite"]
        if jaxrel_main(argv) != 0:
            raise SystemExit(f"training the CG {system} model failed")
    return json.loads((run / "metrics.json").read_text())


def simulate(settings: dict, run: Path, md_ps: float, rerun: bool) -> dict:
    """CG MD (or its earlier run); the stability report."""
    out = run / "md"
    report = out / "stability.json"
    earlier = json.loads(report.read_text()) if report.is_file() else {}
    if rerun or earlier.get("status") != "finished" or earlier["simulated_time_ps"] < md_ps:
        run_md(run / "model", DATA / settings["data"], out, frame=0, ensemble="nvt-langevin",
               temperature_K=settings["temperature_K"], dt_fs=2.0, time_ps=md_ps, log_every=500,
               overwrite=True, progress=False)
    return json.loads(report.read_text())


def held_out(settings: dict, n_frames: int, n: int) -> np.ndarray:
    """The first ``n`` test frames of train_potential's split (seed 0)."""
    return split_frames(n_frames, settings["train"], settings["validation"], None, seed=0).test[:n]


def explain_frames(potential, params, frames, index, figures: Path, label: str) -> tuple[dict, object]:
    """GNN-LRP (GI, up to 3-body) of the frames, the analyses written to ``figures``; a summary."""
    start = time.perf_counter()
    explanation = explain(potential, params, frames.select(index), max_order=3, rules="gi",
                          frame_index=index, progress=True)
    seconds = (time.perf_counter() - start) / len(index)
    written = write_analysis(explanation, figures / label, names={s: "bead" for s in potential.config.species})
    shares = body_order_shares(explanation)
    strength = next(iter(written.results["interaction_strength"].values()))
    totals = {n: explanation.order_totals(n) / len(explanation.species) for n in explanation.tables}
    summary = {
        "frames": index.tolist(), "seconds_per_frame": seconds,
        "share_abs_per_frame_normalised": {k: v.mean for k, v in shares.abs_share.items()},
        "share_abs_pooled": {k: v.pooled for k, v in shares.abs_share.items()},
        "share_energy_pooled": {k: v.pooled for k, v in shares.energy_share.items()},
        "order_totals_eV_per_bead": {str(n): {"mean": float(t.mean()), "std": float(t.std())}
                                     for n, t in totals.items()},
        "prior_eV_per_bead": float(explanation.tables[2].prior.sum() / len(index) / len(explanation.species)),
        "decay_length_A": strength.decay_length_A, "mean_abs_pair_relevance_eV": strength.mean_abs_eV,
        "max_abs_conservation_error_eV": float(np.abs(explanation.conservation_error).max()),
    }
    return summary, (explanation, written)


def pair_findings(written, rdf_peak: float) -> dict:
    """Does the mean 2-body relevance mirror g(r)? Pearson r of R₂(r) with −ln g(r) where g > 0.2,
    and the distance of R₂'s minimum from the RDF's first peak (with and without the prior)."""
    out = {}
    rdf = next(iter(written.results["rdf"]["curves"].values()))
    for name in ("pair_curves", "pair_curves_network"):
        curve = next(iter(written.results[name].values()))
        g = np.interp(curve.x, rdf["r_center"], rdf["g"])
        keep = (g > 0.2) & (curve.count > 0)
        r_min = float(curve.x[keep][np.argmin(curve.mean[keep])])
        out[name] = {"pearson_r_with_minus_ln_g": float(np.corrcoef(curve.mean[keep], -np.log(g[keep]))[0, 1]),
                     "r_of_most_negative_mean_A": r_min, "rdf_peak_A": rdf_peak,
                     "offset_from_rdf_peak_A": r_min - rdf_peak}
    return out


ANGLES_DEG = (np.arange(ANGLE_BINS) + 0.5) * 180.0 / ANGLE_BINS


def angle_findings(written, density: np.ndarray) -> dict:
    """Where the mean 3-body relevance is lowest (most stabilising) and highest, and where the
    first-shell angle distribution (``density`` on :data:`ANGLES_DEG`, 1/deg) peaks."""
    profile = next(iter(written.results["triplet_angles"].values()))
    keep = profile.count >= 20
    smooth = np.convolve(density, np.ones(5) / 5, mode="same")
    peaks = [k for k in range(1, ANGLE_BINS - 1) if smooth[k] >= smooth[k - 1] and smooth[k] > smooth[k + 1]]
    return {"angle_of_most_negative_mean_deg": float(profile.x[keep][np.argmin(profile.mean[keep])]),
            "angle_of_most_positive_mean_deg": float(profile.x[keep][np.argmax(profile.mean[keep])]),
            "angle_distribution_peaks_deg": sorted(float(ANGLES_DEG[k]) for k in
                                                   sorted(peaks, key=lambda k: -smooth[k])[:2]),
            "tetrahedral_deg": TETRAHEDRAL_DEG}


def plot_angles(written, density: np.ndarray, path: Path, title: str) -> None:
    """Mean 3-body relevance against the angle beside the first-shell angle distribution."""
    profile = next(iter(written.results["triplet_angles"].values()))
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    keep = profile.count > 0
    ax.errorbar(profile.x[keep], profile.mean[keep], yerr=profile.sem[keep], fmt="o-", ms=3, color="C0",
                label="mean 3-body relevance")
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(TETRAHEDRAL_DEG, color="grey", ls=":", lw=1)
    ax.set_xlabel("angle at the centre bead (deg)")
    ax.set_ylabel("mean 3-body relevance (eV)", color="C0")
    twin = ax.twinx()
    twin.step(ANGLES_DEG, density, where="mid", color="C1")
    twin.set_ylabel("first-shell angle distribution (1/deg)", color="C1")
    ax.set_title(title)
    fig.savefig(path, dpi=150, bbox_inches="tight")


def published_frame(potential, params, figures: Path) -> dict:
    """The published CG methane frame explained with our model (its bead type is renamed to ours)."""
    frames = read_frames(DATA / "cg_methane_frame" / "bonneau_cg_methane_frame0.npz")
    frames = type(frames)(species=np.full(len(frames.species), potential.config.species[0]),
                          positions=frames.positions, energies=None, forces=None, cell=frames.cell,
                          source=frames.source)
    summary, _ = explain_frames(potential, params, frames, np.array([0]), figures, "methane_published_frame")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    parser.add_argument("--minutes", type=float, default=12.0, help="training budget per system (default 12)")
    parser.add_argument("--md-ps", type=float, default=100.0, help="CG MD time per system, ps (default 100)")
    parser.add_argument("--explain-frames", type=int, default=4)
    parser.add_argument("--retrain", action="store_true")
    parser.add_argument("--rerun-md", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    out = Path(args.out)
    figures = out / "cg_study"
    figures.mkdir(parents=True, exist_ok=True)
    path = out / "cg_study_cpu.json"
    result = json.loads(path.read_text()) if path.is_file() else {}
    result |= {"machine": platform.node(), "processor": platform.processor() or platform.machine(),
               "cpus": os.cpu_count(), "device": str(jax.devices()[0]), "date": datetime.date.today().isoformat(),
               "command": " ".join(sys.argv), "model": " ".join(MODEL)}
    systems = result.setdefault("systems", {})
    for system in args.systems:
        settings = SYSTEMS[system]
        run = ROOT / "runs" / f"cg_{system}_schnet"
        metrics = train(system, settings, run, args.minutes, args.retrain)
        test = metrics["test"]
        row = {"training": metrics["training"], "test": test,
               "forces_rmse_over_reference_rms": test["forces_rmse_meV_per_A"] / test["forces_reference_rms_meV_per_A"]}
        stability = simulate(settings, run, args.md_ps, args.rerun_md)
        row["md"] = {k: v for k, v in stability.items() if k != "replicas"}
        potential, params, _ = load_checkpoint(run / "model")
        frames = read_frames(DATA / settings["data"])
        index = held_out(settings, len(frames), args.explain_frames)
        summary, (explanation, written) = explain_frames(potential, params, frames, index, figures, system)
        r_shell = stability["reference_structure"]["first_shell_radius_A"]
        density = shell_distributions(frames.positions[::10], frames.cell, r_shell).angle
        summary["pairs"] = pair_findings(written, settings["rdf_peak_A"])
        summary["angles"] = angle_findings(written, density) | {"first_shell_radius_A": r_shell}
        plot_angles(written, density, figures / f"{system}_triplet_angles_with_distribution.png",
                    f"CG {system}: 3-body relevance and first-shell angles")
        row["explain"] = summary
        if system == "methane":
            row["published_frame"] = published_frame(potential, params, figures)
        systems[system] = row
        write_json(path, result)
        print(json.dumps({system: {"test_forces_mae_meV_per_A": test["forces_mae_meV_per_A"],
                                   "md_stable": row["md"]["stable"],
                                   "shares": summary["share_abs_per_frame_normalised"]}}, indent=1), flush=True)
    write_json(path, result)


if __name__ == "__main__":
    main()
