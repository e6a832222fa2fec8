"""Do explanation diagnostics predict MD failure? A population study on rMD17 (issue 15).

A population of models (SchNet, PaiNN and NequIP; two sizes; two seeds trained as one
vmapped ensemble; two training budgets) is trained on each of two rMD17 molecules. Every
model gets

* its test errors (the rMD17 test file, 1000 frames);
* MD stability after Fu et al. 2023 (arXiv:2210.07237): Nosé–Hoover NVT at 500 K, 0.5 fs,
  ``--replicas`` starting frames vmapped, bond deviation > 0.5 Å or atom collapse =
  unstable (:func:`jaxrel.stability.stability_report`), for ``--time`` ps per replica;
* the explanation diagnostics of :func:`jaxrel.analysis.diagnostics.stability_diagnostics`
  (the model's MBE dimer curves, GNN-LRP dimer curves, decay lengths and body-order shares
  on test frames) and their seed spread within each (molecule, architecture, size, budget)
  group.

Then, for every diagnostic and for the force MAE: the Spearman rank correlation with the
mean time to instability (replicas that stay stable count with the run length) and the ROC
AUC for separating models with an unstable replica from stable ones, on all models and on a
held-out architecture (the direction of each score is chosen on the other two
architectures, :func:`jaxrel.analysis.diagnostics.predictive_power`).

    python benchmarks/stability_link.py [--time 5] [--replicas 4] [--molecules ethanol malonaldehyde]
                                        [--budgets 2 20] [--held-out nequip]

Trained models, MD results and diagnostics are kept under runs/stability_link/ and reused
by later runs (delete a model's folder to redo it). Writes
benchmarks/results/stability_link_<backend>.json and figures in
benchmarks/results/stability_link/. Data: $JAXREL_DATA or ../shared/data.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import numpy as np

from jaxrel.analysis.diagnostics import DEFINITIONS, predictive_power, seed_spread, stability_diagnostics
from jaxrel.analysis.faithfulness import decompose
from jaxrel.checkpoint import load_models
from jaxrel.data import read_frames
from jaxrel.files import write_json
from jaxrel.md import MDConfig, simulate
from jaxrel.stability import stability_report
from jaxrel.train import train_potential

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "stability_link"

from md_stability import data_dir  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from train_rmd17 import machine  # noqa: E402

ARCHITECTURES = {
    "schnet": {"small": dict(n_features=32, n_interactions=2), "large": dict(n_features=64, n_interactions=3),
               "learning_rate": 1e-3},
    "painn": {"small": dict(n_features=32, n_interactions=2), "large": dict(n_features=64, n_interactions=3),
              "learning_rate": 1e-3},
    "nequip": {"small": dict(n_features=(16, 8), lmax=1, n_interactions=2),
               "large": dict(n_features=(32, 16, 8), lmax=2, n_interactions=3), "learning_rate": 5e-3},
}
"""The population's architectures and sizes (feature widths, interactions), with the learning
rates of ``benchmarks/train_rmd17.py``."""
SEEDS = 2


def model_name(molecule: str, architecture: str, size: str, epochs: int) -> str:
    return f"{molecule}_{architecture}_{size}_e{epochs}"


def train_population(molecules, budgets, extra_budgets: dict[str, list[int]] | None = None) -> list[dict]:
    """Train every (molecule, architecture, size, budget) ensemble not trained yet; return the specs.
    ``extra_budgets`` {molecule: [epochs]} adds budgets for some molecules only."""
    rmd17 = data_dir() / "rmd17"
    specs = []
    for molecule in molecules:
        for architecture, settings in ARCHITECTURES.items():
            for size in ("small", "large"):
                for epochs in list(budgets) + list((extra_budgets or {}).get(molecule, [])):
                    name = model_name(molecule, architecture, size, epochs)
                    folder = RUNS / name
                    specs.append({"name": name, "molecule": molecule, "architecture": architecture,
                                  "size": size, "epochs": epochs, "folder": folder})
                    if (folder / "metrics.json").is_file():
                        continue
                    tic = time.perf_counter()
                    train_potential(rmd17 / f"rmd17_{molecule}_train_01.npz", folder,
                                    test_data=rmd17 / f"rmd17_{molecule}_test_01.npz", model=architecture,
                                    epochs=epochs, n_train=950, n_validation=50, seeds=SEEDS,
                                    learning_rate=settings["learning_rate"], energy_weight=0.01,
                                    forces_weight=0.99, overwrite=True, progress=False, **settings[size])
                    print(f"trained {name} ({SEEDS} seeds) in {time.perf_counter() - tic:.0f} s", flush=True)
    return specs


def md_config(time_ps: float) -> MDConfig:
    """Fu et al.'s MD17 protocol (as ``benchmarks/md_stability.py``) for ``time_ps`` per replica."""
    return MDConfig(ensemble="nvt-nh", dt_fs=0.5, temperature_K=500.0, n_steps=round(time_ps * 2000),
                    log_every=100, tau_fs=10.0, seed=0)


@functools.lru_cache(maxsize=None)
def molecule_frames(molecule: str):
    """``(train, test)`` frames of an rMD17 molecule (train_01 and test_01), read once per run."""
    rmd17 = data_dir() / "rmd17"
    return (read_frames(rmd17 / f"rmd17_{molecule}_train_01.npz"),
            read_frames(rmd17 / f"rmd17_{molecule}_test_01.npz"))


def cached(path: Path, compute) -> list[dict]:
    """The JSON at ``path``, or ``compute()`` written there first."""
    if path.is_file():
        return json.loads(path.read_text())
    out = compute()
    write_json(path, out)
    return out


def run_stability(spec: dict, time_ps: float, n_replicas: int) -> list[dict]:
    """MD stability of each seed of one ensemble (cached in the ensemble's folder)."""
    def compute():
        train, test = molecule_frames(spec["molecule"])
        reference = np.concatenate([train.positions, test.positions])
        starts = list(range(0, 250 * n_replicas, 250))
        config = md_config(time_ps)
        out = []
        for potential, params, metadata in load_models(spec["folder"]):
            tic = time.perf_counter()
            traj = simulate(potential, params, test.positions[starts], test.species, config=config, progress=False)
            report = stability_report(traj, reference, test.species, molecule=True, ensemble=config.ensemble)
            times = [r["time_to_instability_ps"] for r in report["replicas"]]
            out.append({"seed": metadata["seed"], "stable": report["stable"],
                        "time_to_instability_ps": times,
                        "mean_time_to_instability_ps": float(np.mean([time_ps if t is None else t for t in times])),
                        "instability": [r["instability"] for r in report["replicas"]],
                        "hr_mae": report["hr_mae"], "steps_per_second": report["steps_per_second"],
                        "wall_seconds": time.perf_counter() - tic})
            print(f"MD {spec['name']} seed {metadata['seed']}: stable={report['stable']} times={times} "
                  f"({out[-1]['wall_seconds']:.0f} s)", flush=True)
        return out

    return cached(spec["folder"] / f"md_{time_ps:g}ps_{n_replicas}replicas.json", compute)


def run_diagnostics(spec: dict, n_frames: int) -> list[dict]:
    """Diagnostics of each seed of one ensemble (cached): r_ref from the training file, the
    decompositions (MBE and GNN-LRP GI, 1–3-body) of the first ``n_frames`` test frames."""
    def compute():
        train, test = molecule_frames(spec["molecule"])
        out = []
        for potential, params, metadata in load_models(spec["folder"]):
            tic = time.perf_counter()
            explanations = decompose(potential, params, test.select(np.arange(n_frames)), rules=("gi",),
                                     forces=False)
            d = stability_diagnostics(potential, params, train.positions, train.species, explanations=explanations)
            out.append({"seed": metadata["seed"], **d.summary(), "seconds": time.perf_counter() - tic})
        return out

    return cached(spec["folder"] / f"diagnostics_{n_frames}frames.json", compute)


def population_rows(specs: list[dict]) -> list[dict]:
    """One row per model (seed): group, errors, MD outcome, diagnostics and their seed spread."""
    rows = []
    for spec in specs:
        metrics = json.loads((spec["folder"] / "metrics.json").read_text())
        spread = seed_spread([d["values"] for d in spec["diagnostics"]])
        for md, diag in zip(spec["md"], spec["diagnostics"]):
            test = metrics["members"][str(md["seed"])]["test"]
            rows.append({"model": spec["name"], "molecule": spec["molecule"], "architecture": spec["architecture"],
                         "size": spec["size"], "epochs": spec["epochs"], "seed": md["seed"],
                         "forces_mae_meV_per_A": test["forces_mae_meV_per_A"],
                         "energy_mae_meV": test["energy_mae_meV"],
                         "unstable": _unstable(md), "any_replica_unstable": not md["stable"],
                         "mean_time_to_instability_ps": md["mean_time_to_instability_ps"],
                         "time_to_instability_ps": md["time_to_instability_ps"], "instability": md["instability"],
                         "diagnostics": diag["values"],
                         "seed_spread": {k: v for k, v in spread.items() if k in SPREAD_SCORES}})
    return rows


def _unstable(md: dict) -> bool:
    """The binary label: fewer than half of the replicas ran the whole time without instability."""
    times = md["time_to_instability_ps"]
    return sum(t is None for t in times) < len(times) / 2


SPREAD_SCORES = ("mbe_inner_well_eV", "relevance_inner_well_eV", "mbe_three_body_share")
"""Diagnostics whose seed spread (over the two seeds of a group) is scored too."""


def scores(rows: list[dict]) -> dict[str, np.ndarray]:
    """{score name: (models,) values, NaN where missing}: force MAE, each diagnostic, each seed spread."""
    def column(get):
        return np.array([np.nan if get(r) is None else get(r) for r in rows], np.float64)
    out = {"forces_mae_meV_per_A": column(lambda r: r["forces_mae_meV_per_A"]),
           "energy_mae_meV": column(lambda r: r["energy_mae_meV"])}
    for name in DEFINITIONS:
        out[name] = column(lambda r, name=name: r["diagnostics"][name])
    for name in SPREAD_SCORES:
        out[f"{name}_seed_spread"] = column(lambda r, name=name: r["seed_spread"][name])
    return out


def power_table(rows: list[dict], label: str = "unstable") -> dict:
    """Spearman ρ and ROC AUC of every score: all models (direction chosen in-sample) and each
    architecture held out (direction chosen on the other two); ``label``: the rows' binary key."""
    table = {}
    values = scores(rows)
    t = np.array([r["mean_time_to_instability_ps"] for r in rows])
    unstable = np.array([r[label] for r in rows])
    architectures = sorted({r["architecture"] for r in rows})
    forces = values["forces_mae_meV_per_A"]
    for name, score in values.items():
        entry = {}
        try:
            entry["all_models_in_sample"] = predictive_power(score, t, unstable, control=forces)._asdict()
        except ValueError as err:
            entry["all_models_in_sample"] = {"error": str(err)}
        for held in architectures:
            test = np.array([r["architecture"] == held for r in rows])
            try:
                fitted = predictive_power(score[~test], t[~test], unstable[~test])
                entry[f"held_out_{held}"] = predictive_power(score[test], t[test], unstable[test],
                                                             direction=fitted.direction,
                                                             control=forces[test])._asdict()
            except ValueError as err:
                entry[f"held_out_{held}"] = {"error": str(err)}
        table[name] = entry
    return table


def plot_population(rows: list[dict], out: Path) -> dict[str, Path]:
    """Each score against the mean time to instability, one colour per architecture."""
    from matplotlib.figure import Figure

    from jaxrel.analysis.plots import save_figure

    values = scores(rows)
    t = np.array([r["mean_time_to_instability_ps"] for r in rows])
    architectures = sorted({r["architecture"] for r in rows})
    names = list(values)
    fig = Figure(figsize=(16, 11))
    axes = fig.subplots(3, 4)
    for ax, name in zip(axes.flat, names):
        for k, arch in enumerate(architectures):
            pick = np.array([r["architecture"] == arch for r in rows])
            for molecule, marker in zip(sorted({r["molecule"] for r in rows}), "o^s"):
                m = pick & np.array([r["molecule"] == molecule for r in rows])
                ax.scatter(values[name][m], t[m], s=18, marker=marker, color=f"C{k}",
                           label=f"{arch}, {molecule}")
        ax.set_xlabel(name)
        ax.set_ylabel("mean time to instability (ps)")
        if "mae" in name or "spread" in name or name == "decay_length_A":
            ax.set_xscale("symlog", linthresh=1e-3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    return {"population": save_figure(fig, out / "population.png")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time", type=float, default=5.0, help="simulated time per replica, ps")
    parser.add_argument("--replicas", type=int, default=4, help="starting frames run vmapped")
    parser.add_argument("--molecules", nargs="+", default=["ethanol", "malonaldehyde"])
    parser.add_argument("--budgets", nargs="+", type=int, default=[2, 20], help="training epochs")
    parser.add_argument("--long-budget", type=int, default=60, help="epochs of a third budget, for the first "
                                                                      "molecule only (0: none)")
    parser.add_argument("--frames", type=int, default=4, help="test frames decomposed per model")
    parser.add_argument("--phase", choices=("train", "md", "all"), default="all",
                        help="stop after training, or after MD (default: everything)")
    args = parser.parse_args()
    tic = time.perf_counter()
    extra = {args.molecules[0]: [args.long_budget]} if args.long_budget else {}
    specs = train_population(args.molecules, args.budgets, extra)
    if args.phase == "train":
        return
    for spec in specs:
        spec["md"] = run_stability(spec, args.time, args.replicas)
    if args.phase == "md":
        return
    for spec in specs:
        spec["diagnostics"] = run_diagnostics(spec, args.frames)
    rows = population_rows(specs)
    out = ROOT / "benchmarks" / "results"
    figures = plot_population(rows, out / "stability_link")
    result = {
        "benchmark": "stability_link", "machine": machine(),
        "command": "python benchmarks/stability_link.py " + " ".join(
            ["--time", f"{args.time:g}", "--replicas", str(args.replicas), "--molecules", *args.molecules,
             "--budgets", *map(str, args.budgets), "--long-budget", str(args.long_budget),
             "--frames", str(args.frames)]),
        "population": {"architectures": {a: {k: v for k, v in s.items()} for a, s in ARCHITECTURES.items()},
                       "seeds": SEEDS, "budgets_epochs": args.budgets, "molecules": args.molecules,
                       "long_budget_epochs": {m: b for m, b in extra.items()},
                       "n_models": len(rows), "n_unstable": int(sum(r["unstable"] for r in rows)),
                       "training": "950 train / 50 validation frames of rmd17_<molecule>_train_01, batch 8, "
                                   "energy weight 0.01, forces 0.99; both seeds of a group in one vmapped run; "
                                   "each budget is its own run (its learning-rate schedule spans its epochs)"},
        "md": {"protocol": "Fu et al. 2023 (arXiv:2210.07237): Nosé–Hoover chain NVT 500 K, 0.5 fs, tau 10 fs, "
                           "bond deviation > 0.5 Å or atom collapse = unstable (jaxrel.stability)",
               "time_ps_per_replica": args.time, "replicas": args.replicas,
               "starting_frames": f"test frames {list(range(0, 250 * args.replicas, 250))}",
               "time_to_instability": "mean over replicas; a replica that stayed stable counts the run length",
               "unstable": "fewer than half of the replicas ran the whole time without instability (at "
                           "least one replica failed in almost every model, so 'any replica' would not separate)"},
        "diagnostics": {"definitions": DEFINITIONS, "frames": f"first {args.frames} test frames",
                        "reference": "r_ref from rmd17_<molecule>_train_01 (1000 frames)", "rule": "gi"},
        "power": power_table(rows),
        "power_any_replica_unstable": power_table(rows, "any_replica_unstable"),
        "power_note": "all_models_in_sample: the direction of each score (larger = unstable or smaller = "
                      "unstable) is chosen on the same models, so AUC ≥ 0.5 by construction; held_out_<arch>: "
                      "the direction is chosen on the other architectures and the AUC and ρ are measured on "
                      "the held-out one only; partial_spearman: the rank correlation with the time to instability "
                      "at fixed force MAE (what a diagnostic adds to the test error)",
        "models": rows,
        "figures": {k: str(p.relative_to(ROOT)) for k, p in figures.items()},
        "wall_seconds_this_run": time.perf_counter() - tic,
    }
    path = out / f"stability_link_{result['machine']['backend']}.json"
    write_json(path, result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
