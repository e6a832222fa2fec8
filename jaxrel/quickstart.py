"""The main job end to end on an embedded default (``make quickstart``): generate liquid
argon with an exact n-body decomposition, train SchNet, explain held-out frames, compare
the explanation with the exact physics and write ``report.html``.

Units: Å, eV, K, minutes of wall time for training.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

DEFAULT_RUN_DIR = "runs/quickstart"


def _stage(k: int, text: str) -> None:
    print(f"[{k}/5] {text}", flush=True)


def run_quickstart(out=DEFAULT_RUN_DIR, *, minutes: float = 4.0, n_frames: int = 200,
                   explain_frames: int = 8) -> dict:
    """Run the five stages, print a plain-text summary and return it (also ``OUT/summary.json``).

    1. 64-atom liquid argon (Lennard-Jones + Axilrod–Teller–Muto, :mod:`jaxrel.data.noble_gas`):
       ``n_frames`` training frames and ``explain_frames`` held-out frames of an independent
       trajectory.
    2. SchNet, 32 features × 2 interactions, at the physics' cutoff, zero species energies
       (isolated noble-gas atoms), trained for ``minutes``.
    3. :func:`jaxrel.explain` of the held-out frames up to 3-body terms (GI rule).
    4. Analyses and the recovery of the exact pair, triplet and local energies.
    5. ``OUT/report.html``.

    Returns:
        {"report", "model", "test_errors", "explain", "seconds", "conservation_error_eV",
        "higher_order_residual_eV", "body_order_energy_share", "recovery"}.
    """
    from jaxrel.analysis import build_report
    from jaxrel.analysis.write import jsonable
    from jaxrel.checkpoint import load_checkpoint
    from jaxrel.data import read_frames
    from jaxrel.data.noble_gas import generate_noble_gas, save_noble_gas
    from jaxrel.relevance import explain
    from jaxrel.train import train_potential

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seconds = {}
    clock = time.perf_counter()
    train_path, heldout_path = out / "argon.npz", out / "argon_heldout.npz"
    _stage(1, f"generating liquid argon (Lennard-Jones + Axilrod–Teller–Muto, exact n-body terms): "
              f"{n_frames} training frames → {train_path}, {explain_frames} held-out frames → {heldout_path}")
    for path, count, seed in ((train_path, n_frames, 0), (heldout_path, explain_frames, 1)):
        data = generate_noble_gas("Ar", n_atoms=64, n_frames=count, seed=seed, progress=True)
        save_noble_gas(data, path)
    cutoff = float(data["cutoff"])
    seconds["generate"] = time.perf_counter() - clock

    clock = time.perf_counter()
    _stage(2, f"training SchNet (32 features, 2 interactions, cutoff {cutoff:.2f} Å as the physics, "
              f"zero species energies as for isolated noble-gas atoms) for {minutes} min")
    metrics = train_potential(train_path, out, test_data=heldout_path, model="schnet", cutoff=cutoff,
                              n_features=32, n_interactions=2, n_rbf=20, minutes=minutes, batch_size=8,
                              learning_rate=1e-3, energy_weight=0.5, forces_weight=0.5, species_energies="zero")
    seconds["train"] = time.perf_counter() - clock

    clock = time.perf_counter()
    _stage(3, f"explaining the {explain_frames} held-out frames up to 3-body terms (GNN-LRP, GI rule)")
    potential, params, _ = load_checkpoint(out / "model")
    explanation = explain(potential, params, read_frames(heldout_path), max_order=3, rules="gi",
                          model_path=out / "model", data_path=heldout_path, progress=True)
    explanation.save(out / "explained")
    seconds["explain"] = time.perf_counter() - clock

    clock = time.perf_counter()
    _stage(4, "analysing the relevance and comparing it with the exact pair, triplet and local energies")
    test = metrics["test"]
    notes = [f"Liquid argon, 64 atoms, Lennard-Jones + Axilrod–Teller–Muto. SchNet trained for {minutes} "
             f"min on {metrics['n_frames']['train']} frames; held-out test errors: energy MAE "
             f"{test['energy_mae_meV'] / 64:.3f} meV/atom, force MAE {test['forces_mae_meV_per_A']:.2f} meV/Å "
             f"(reference force RMS {test['forces_reference_rms_meV_per_A']:.1f} meV/Å)."]
    report = build_report(explanation, out, title="jaxrel quickstart: what SchNet learned about liquid argon",
                          notes=notes, progress=True)
    seconds["analyse_and_report"] = time.perf_counter() - clock
    _stage(5, f"report written: {report['report']}")

    recovery = report["recovery"].summary()
    shares = report["analysis"]["body_order_shares"]
    summary = {
        "report": str(report["report"]), "model": str(out / "model"), "test_errors": test,
        "explain": {"out": str(out / "explained"), "frames": len(explanation.frames),
                    "mean_seconds_per_frame": float(np.mean(explanation.seconds)),
                    "max_abs_conservation_error_eV": float(np.abs(explanation.conservation_error).max())},
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "conservation_error_eV": explanation.conservation_error.tolist(),
        "higher_order_residual_eV": explanation.higher_order_residual.tolist(),
        "body_order_energy_share": {n: v.pooled for n, v in shares.energy_share.items()},
        "recovery": {k: recovery[k] for k in ("pairs", "triplets", "atomwise") if k in recovery}}
    (out / "summary.json").write_text(json.dumps(jsonable(summary), indent=2))
    pairs, triplets, atomwise = (recovery.get(k) for k in ("pairs", "triplets", "atomwise"))
    print(f"test errors: energy {test['energy_mae_meV'] / 64:.3f} meV/atom, forces {test['forces_mae_meV_per_A']:.2f} meV/Å")
    print(f"2-body terms vs exact LJ pair energies: r = {pairs['pearson_r']:.3f}, MAE {pairs['mae_eV'] * 1e3:.2f} meV; "
          f"Σ per frame {np.mean(pairs['recovered_total_eV']):.3f} eV (exact {np.mean(pairs['exact_total_eV']):.3f})")
    if triplets:
        print(f"3-body total per frame {np.mean(triplets['recovered_total_eV']):.3f} eV "
              f"(exact ATM {np.mean(triplets['exact_total_eV']):.3f} eV)")
    if atomwise:
        print(f"atomwise energies vs exact local energies: r = {atomwise.pearson_r:.3f}, "
              f"MAE {atomwise.mae * 1e3:.2f} meV")
    print(f"largest |conservation error| {np.abs(explanation.conservation_error).max():.3g} eV "
          f"(relevance absorbed by biases); total {sum(seconds.values()) / 60:.1f} min")
    print(f"report: {report['report']}  summary: {out / 'summary.json'}")
    return summary
