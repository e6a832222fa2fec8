"""The main job end to end on an embedded default (``make quickstart``): generate liquid
argon with an exact n-body decomposition, train SchNet, explain held-out frames with
GNN-LRP and with the model's own many-body expansion, compare both with the exact physics
(the faithfulness audit) and write ``report.html``.

Units: Å, eV, K, minutes of wall time for training.
"""

from __future__ import annotations

import time

import numpy as np

DEFAULT_RUN_DIR = "runs/quickstart"

FILES = ("argon.npz", "argon_heldout.npz", "summary.json")
"""What the quickstart writes into its folder besides the training run and the audit."""


def _stage(k: int, text: str) -> None:
    print(f"[{k}/4] {text}", flush=True)


def run_quickstart(out=DEFAULT_RUN_DIR, *, minutes: float = 4.0, n_frames: int = 200,
                   explain_frames: int = 8, overwrite: bool = False) -> dict:
    """Run the four stages, print a plain-text summary and return it (also ``OUT/summary.json``).

    1. 64-atom liquid argon (Lennard-Jones + Axilrod–Teller–Muto, :mod:`jaxrel.data.noble_gas`):
       ``n_frames`` training frames and ``explain_frames`` held-out frames of an independent
       trajectory.
    2. SchNet, 32 features × 2 interactions, at the physics' cutoff, zero species energies
       (isolated noble-gas atoms), trained for ``minutes``.
    3. The faithfulness audit of the held-out frames up to 3-body terms
       (:func:`jaxrel.audit.audit_to_folder`): the model's MBE with forces split by body
       order, GNN-LRP under GI, LRP-ε and LRP-γ, each compared with the others and with the
       exact pair, triplet and local energies; explanation folders ``OUT/mbe``, ``OUT/gi``,
       ``OUT/lrp-eps``, ``OUT/lrp-gamma`` and ``OUT/audit.json``.
    4. ``OUT/report.html`` (of the GI explanation, with the Faithfulness section).

    The options and ``out`` are checked before any data is generated; ``out`` holding an
    earlier quickstart is refused unless ``overwrite`` (which removes that run's files first).

    Returns:
        {"report", "model", "test_errors", "explain" (the GI explanation), "seconds",
        "conservation_error_eV", "higher_order_residual_eV", "body_order_energy_share",
        "recovery" (of the GI explanation), "audit" (verdict and body-order totals per method)}.
    Raises:
        ValueError: a non-positive ``minutes``, fewer than 20 training frames (the smallest run
            with non-empty training, validation and batch), fewer than 1 frame to explain, or an
            ``out`` that holds an earlier run (without ``overwrite``) or cannot be written.
    """
    from jaxrel.analysis import body_order_shares
    from jaxrel.analysis.faithfulness import AUDIT_RULES
    from jaxrel.files import write_json
    from jaxrel.audit import audit_to_folder, totals_line
    from jaxrel.checkpoint import load_checkpoint
    from jaxrel.data import read_frames
    from jaxrel.data.noble_gas import generate_noble_gas, save_noble_gas
    from jaxrel.train import train_potential

    from jaxrel.audit import FILES as AUDIT_FILES
    from jaxrel.files import prepare_output
    from jaxrel.train import FILES as TRAIN_FILES

    checks = (("--minutes", minutes, minutes > 0, "a positive number of minutes"),
              ("--frames", n_frames, int(n_frames) == n_frames and n_frames >= 20, "a whole number of at least 20"),
              ("--explain-frames", explain_frames, int(explain_frames) == explain_frames and explain_frames >= 1,
               "a whole number of at least 1"))
    for option, value, ok, need in checks:
        if not ok:
            raise ValueError(f"{option} is {value}; it must be {need}")
    out = prepare_output(out, (*FILES, *TRAIN_FILES, *AUDIT_FILES), overwrite=overwrite)
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
    _stage(3, f"auditing the {explain_frames} held-out frames up to 3-body terms: the model's own many-body "
              "expansion (MBE) beside GNN-LRP (GI, LRP-ε, LRP-γ) and the exact physics; analyses and report")
    potential, params, _ = load_checkpoint(out / "model")
    test = metrics["test"]
    notes = [f"Liquid argon, 64 atoms, Lennard-Jones + Axilrod–Teller–Muto. SchNet trained for {minutes} "
             f"min on {metrics['n_frames']['train']} frames; held-out test errors: energy MAE "
             f"{test['energy_mae_meV'] / 64:.3f} meV/atom, force MAE {test['forces_mae_meV_per_A']:.2f} meV/Å "
             f"(reference force RMS {test['forces_reference_rms_meV_per_A']:.1f} meV/Å)."]
    audit, report_path = audit_to_folder([(potential, params)], read_frames(heldout_path), out, model_path=out / "model",
                                         data_path=heldout_path, rules=AUDIT_RULES, notes=notes, progress=True,
                                         title="jaxrel quickstart: what SchNet learned about liquid argon, "
                                               "and how far its explanation can be trusted")
    explanation = audit.explanations["gi"]
    seconds["audit_and_report"] = time.perf_counter() - clock
    _stage(4, f"report written: {report_path}")

    recovery = audit.recovery["gi"].summary()
    shares = body_order_shares(explanation)
    summary = {
        "report": str(report_path), "model": str(out / "model"), "test_errors": test,
        "explain": {"out": str(out / "gi"), "frames": len(explanation.frames),
                    "mean_seconds_per_frame": float(np.mean(explanation.seconds)),
                    "max_abs_conservation_error_eV": float(np.abs(explanation.conservation_error).max())},
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "conservation_error_eV": explanation.conservation_error.tolist(),
        "higher_order_residual_eV": explanation.higher_order_residual.tolist(),
        "body_order_energy_share": {n: v.pooled for n, v in shares.energy_share.items()},
        "recovery": {k: recovery[k] for k in ("pairs", "triplets", "atomwise") if k in recovery},
        "audit": {"out": str(out / "audit.json"), "verdict": audit.verdict,
                  "body_order_totals_eV": {name: {str(n): float(np.mean(e.order_totals(n))) for n in e.tables}
                                           for name, e in audit.explanations.items()}}}
    write_json(out / "summary.json", summary)
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
    print("body-order totals, the model's own MBE beside GNN-LRP (mean over the held-out frames):")
    print(totals_line(audit))
    print(f"faithfulness: {audit.verdict}")
    print(f"largest |conservation error| {np.abs(explanation.conservation_error).max():.3g} eV "
          f"(relevance absorbed by biases); total {sum(seconds.values()) / 60:.1f} min")
    print(f"report: {report_path}  audit: {out / 'audit.json'}  summary: {out / 'summary.json'}")
    return summary
