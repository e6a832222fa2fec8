"""``jaxrel audit``: the model's many-body expansion beside GNN-LRP and the exact physics,
saved as explanation folders, ``audit.json`` and ``report.html`` with a Faithfulness section.

Output folder::

    audit.json                  per method body-order totals, residuals, agreement, verdict, and
                                the stability diagnostics (:mod:`jaxrel.analysis.diagnostics`)
                                (:meth:`jaxrel.analysis.faithfulness.Audit.summary`; the report
                                links its copy in figures/)
    mbe/, gi/, lrp-eps/, …      one explanation folder per method (nbody.npz + summary.json); for an
                                ensemble of seeds the mean over the seeds with each term's spread
    seeds/seed<s>/<method>/     (ensembles) each member's explanations
    report.html, figures/       the report of the first GNN-LRP rule's explanation (the MBE's
                                for a model without message-passing layers) with the audit
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxrel.analysis import build_report
from jaxrel.analysis.report import FILES as REPORT_FILES
from jaxrel.analysis.faithfulness import AUDIT_RULES, Audit, run_audit, run_ensemble_audit, with_diagnostics
from jaxrel.analysis.recovery import load_ground_truth
from jaxrel.files import write_json

FILES = ("audit.json", "mbe", *AUDIT_RULES, "seeds", *REPORT_FILES)
"""What :func:`audit_to_folder` writes into its folder (see the module docstring)."""


def default_rules(potential) -> tuple[str, ...]:
    """The GNN-LRP rules an audit runs: all of :data:`AUDIT_RULES`, none for a model without
    message-passing layers (the body-ordered model is explained by its MBE alone)."""
    return AUDIT_RULES if potential.has_layers else ()


def audit_to_folder(models: list[tuple], frames, out, *, seeds: list[int] | None = None, frame_index=None,
                    model_path=None, data_path=None, max_order: int = 3, rules=None, forces: bool = True,
                    title: str | None = None, notes: list[str] | None = None, reference=None,
                    progress: bool = False, mesh=None) -> tuple[Audit, Path]:
    """Run the audit of one model or an ensemble and write its folder (module docstring).

    Args:
        models: [(potential, params)]: one model, or one per seed of an ensemble (as
            :func:`jaxrel.checkpoint.load_models` gives them, metadata dropped).
        frames, frame_index, model_path, data_path, max_order, forces, mesh: as
            :func:`~jaxrel.analysis.faithfulness.run_audit`; ground truth is read from
            ``data_path`` when it is a ``jaxrel generate noble-gas`` file.
        out: the output folder (created).
        seeds: the seeds of an ensemble's members (default 0, 1, …).
        rules: GNN-LRP rule names (default :func:`default_rules`).
        title, notes: of the report.
        reference: the frames (:class:`jaxrel.data.Frames`) whose shortest distance per species pair
            the stability diagnostics' dimer curves are held against, e.g. every frame of the data
            file or the training set (default ``frames``; :func:`~jaxrel.analysis.faithfulness.with_diagnostics`).
        progress: progress bars.

    Returns:
        ``(audit, path of report.html)``.
    Raises:
        ValueError: as ``run_audit``; GNN-LRP rules asked of a model without message-passing layers.
    """
    potential = models[0][0]
    rules = default_rules(potential) if rules is None else tuple(rules)
    if rules and not default_rules(potential):
        raise ValueError(f"the {potential.config.model} model has no message-passing layers for GNN-LRP: "
                         "audit it with the MBE alone (leave --rules out)")
    out = Path(out)
    options = dict(max_order=max_order, rules=rules, forces=forces, frame_index=frame_index,
                   model_path=model_path, data_path=data_path, progress=progress, mesh=mesh)
    truth = load_ground_truth(data_path)
    if len(models) == 1:
        audit = run_audit(*models[0], frames, truth=truth, **options)
    else:
        audit = run_ensemble_audit(models, list(range(len(models))) if seeds is None else seeds, frames,
                                   truth=truth, **options)
    reference = frames if reference is None else reference
    audit = with_diagnostics(audit, models, reference.positions, reference.species, reference.cell)
    for name, explanation in audit.explanations.items():
        explanation.save(out / name)
    main = audit.explanations[rules[0] if rules else "mbe"]
    report = build_report(main, out, data_path=data_path, audit=audit, progress=progress,
                          title=title or f"jaxrel audit: {_model_name(model_path)}",
                          notes=notes)
    write_json(out / "audit.json", report["audit"])
    return audit, report["report"]


def _model_name(model_path) -> str:
    """A readable name for a model folder: its run folder for ``…/RUN/model``, else its own name."""
    path = Path(str(model_path or "model"))
    return path.parent.name if path.name == "model" and path.parent.name else path.name


def totals_line(audit: Audit) -> str:
    """One line per method: mean per-frame totals of orders 2 and 3 (and exact ones when known)."""
    lines = []
    for name, e in audit.explanations.items():
        totals = ", ".join(f"Σ{n}-body {np.mean(e.order_totals(n)):+.3f}" for n in sorted(e.tables) if n > 1)
        lines.append(f"  {name:<10} {totals} eV per frame, higher orders {np.mean(e.higher_order_residual):+.3f} eV")
    if audit.recovery:
        r = next(iter(audit.recovery.values()))
        exact = f"Σ2-body {np.mean(r.pairs.exact_total):+.3f}"
        if r.triplets is not None:
            exact += f", Σ3-body {np.mean(r.triplets.exact_total):+.3f}"
        lines.append(f"  {'exact':<10} {exact} eV per frame")
    return "\n".join(lines)
