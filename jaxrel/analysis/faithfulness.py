"""How far an explanation can be trusted: the model's own many-body expansion beside GNN-LRP
and, where it is known, the exact physics (``jaxrel audit``).

Three comparisons separate the two sources of error (Chong et al. 2025, arXiv:2509.14146):

* MBE vs exact: did the model learn the physics' body orders?
* GNN-LRP vs MBE: does the attribution report the model's own terms?
* GNN-LRP vs exact: what a reader of the relevance would conclude.

:func:`run_audit` decomposes the same frames with the MBE and each GNN-LRP rule;
:func:`compare_decompositions` matches their terms (each set of atoms is listed by every
method, so terms compare one to one), compares them with the exact noble-gas terms when
the data carries them, and states in one sentence which decomposition to trust;
:func:`write_audit` writes ``audit.json`` and the figures.

Goals (issue "faithfulness audit"): the recovered pair curve within 5 % of ε (RMS over
distance bins), the 3-body total per frame within 10 % of the exact ATM total, and, in the
null test without ATM, a 3-body total below 1 % of the 2-body total.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from jaxrel.analysis.diagnostics import Diagnostics, ensemble_diagnostics
from jaxrel.analysis.numerics import Agreement, atomwise_comparison, pair_relevance_curve
from jaxrel.analysis.plots import (plot_dimer_curves, plot_force_components, plot_method_totals, plot_pair_curves_by_method,
                                   plot_terms_against)
from jaxrel.analysis.recovery import Recovery, compare_with_ground_truth, match_terms
from jaxrel.analysis.write import Written
from jaxrel.files import write_json
from jaxrel.relevance import Explanation

AUDIT_RULES = ("gi", "lrp-eps", "lrp-gamma")
"""GNN-LRP rules an audit runs by default."""

PAIR_CURVE_GOAL = 0.05
"""Goal for the recovered pair curve: RMS error over distance bins below this fraction of ε."""
THREE_BODY_GOAL = 0.10
"""Goal for the 3-body total per frame: within this fraction of the exact ATM total."""
NULL_GOAL = 0.01
"""Goal of the null test (no ATM): ``|Σ 3-body|`` below this fraction of ``|Σ 2-body|`` per frame."""
MIN_BIN_COUNT = 5
"""Distance bins with fewer pairs than this are left out of the pair-curve error."""


@dataclass(frozen=True)
class PhysicsScore:
    """One decomposition against the exact noble-gas terms.

    pair_curve_rms_over_epsilon: {species pair: RMS over distance bins of mean R₂ − mean φ of
    the same pairs, in units of the pair's ε}; three_body_total, two_body_total,
    exact_three_body_total, exact_two_body_total: per-frame means, eV;
    three_body_error: ``|Σ R₃ − Σ E_ATM| / |Σ E_ATM|`` (with ATM) or ``|Σ R₃| / |Σ R₂|`` (null test),
    of the per-frame means; meets_goals: both within the goals of the module docstring.
    """

    pair_curve_rms_over_epsilon: dict[tuple[int, int], float]
    two_body_total: float
    exact_two_body_total: float
    three_body_total: float | None
    exact_three_body_total: float | None
    three_body_error: float | None
    meets_goals: bool


@dataclass(frozen=True)
class Audit:
    """Several decompositions of the same frames compared (:func:`compare_decompositions`).

    explanations: {method: Explanation}, "mbe" and GNN-LRP rule names; agreement:
    {(method a, method b): {order: Agreement or None (a constant side)}} term by term;
    recovery and physics: {method: Recovery / PhysicsScore} against the exact terms (None
    without ground truth); three_body_in_truth; verdict: one sentence. For an ensemble
    (:func:`run_ensemble_audit`) the explanations are the means over the seeds (tables with a
    ``spread`` column), ``seeds`` lists the seeds and ``member_physics`` each seed's scores.
    ``diagnostics`` and ``diagnostics_spread``: the model's stability diagnostics and their
    seed spread (:mod:`jaxrel.analysis.diagnostics`; None until :func:`jaxrel.audit.audit_to_folder`
    or :func:`with_diagnostics` adds them).
    """

    explanations: dict[str, Explanation]
    agreement: dict[tuple[str, str], dict[int, Agreement | None]]
    recovery: dict[str, Recovery] | None
    physics: dict[str, PhysicsScore] | None
    three_body_in_truth: bool | None
    verdict: str
    seeds: list[int] | None = None
    member_physics: list[dict[str, PhysicsScore]] | None = None
    diagnostics: Diagnostics | None = None
    diagnostics_spread: dict[str, float | None] | None = None

    def summary(self) -> dict:
        """The JSON-ready result written as ``audit.json``."""
        methods = {}
        for name, e in self.explanations.items():
            methods[name] = {
                "body_order_totals_eV": {str(n): e.order_totals(n).tolist() for n in sorted(e.tables)},
                "truncation_residual_eV": e.higher_order_residual.tolist(),
                "conservation_error_eV": e.conservation_error.tolist(),
                "seconds": e.seconds.tolist()}
            if e.forces is not None:
                split = e.body_order_forces()
                methods[name]["force_rms_eV_per_A"] = {
                    str(n + 1): float(np.sqrt(np.mean(split[:, n] ** 2))) for n in range(split.shape[1])}
                methods[name]["force_rms_eV_per_A"]["residual"] = float(np.sqrt(np.mean(e.force_residual ** 2)))
        agreement = [{"a": a, "b": b, "order": n, **(_agreement_dict(g) if g is not None else {"pearson_r": None})}
                     for (a, b), orders in self.agreement.items() for n, g in orders.items()]
        first = next(iter(self.explanations.values()))
        out = {"frames": first.frames.tolist(), "max_order": first.max_order,
               "model": first.metadata.get("model"), "data": first.metadata.get("data"),
               "units": {"energy": "eV", "force": "eV/Å"}, "methods": methods, "agreement": agreement,
               "verdict": self.verdict}
        if self.seeds is not None:
            out["seeds"] = {"seeds": self.seeds, "methods": {name: _seed_dict(e, self.member_physics, name)
                                                             for name, e in self.explanations.items()}}
        if self.physics is not None:
            any_recovery = next(iter(self.recovery.values()))
            exact = {"2": any_recovery.pairs.exact_total.tolist()}
            if any_recovery.triplets is not None:
                exact["3"] = any_recovery.triplets.exact_total.tolist()
            out["exact"] = {"three_body_in_truth": self.three_body_in_truth, "body_order_totals_eV": exact}
            out["versus_exact"] = {name: _physics_dict(score, self.recovery[name])
                                   for name, score in self.physics.items()}
        if self.diagnostics is not None:
            out["stability_diagnostics"] = {**self.diagnostics.summary(), "seed_spread": self.diagnostics_spread}
        return out


def _seed_dict(explanation: Explanation, member_physics, name: str) -> dict:
    """How stable one method's terms are over the seeds of an ensemble."""
    out = {}
    totals = explanation.metadata.get("seed_order_totals_eV", {})
    for n, table in sorted(explanation.tables.items()):
        size = np.abs(table.relevance)
        out[str(n)] = {"mean_abs_term_eV": float(size.mean()), "mean_spread_eV": float(table.spread.mean()),
                       "relative_spread": float(table.spread.mean() / max(size.mean(), 1e-300)),
                       "resolved_fraction": float(np.mean(size > 2 * table.spread)),
                       "frame_total_std_eV": np.std(totals[str(n)], axis=0, ddof=1).tolist()
                       if len(totals.get(str(n), [])) > 1 else None}
    if member_physics is not None:
        scores = [m[name] for m in member_physics]
        out["versus_exact_by_seed"] = {
            "pair_curve_rms_over_epsilon": [max(s.pair_curve_rms_over_epsilon.values()) for s in scores],
            "three_body_total_eV": [s.three_body_total for s in scores],
            "three_body_error": [s.three_body_error for s in scores],
            "meets_goals": [s.meets_goals for s in scores]}
    return out


def _agreement_dict(g: Agreement) -> dict:
    return {"pearson_r": g.pearson_r, "slope": g.slope, "mae_eV": g.mae, "rmse_eV": g.rmse, "n": g.n}


def _physics_dict(score: PhysicsScore, recovery: Recovery) -> dict:
    out = {"pair_curve_rms_over_epsilon": {f"{a}-{b}": v for (a, b), v in score.pair_curve_rms_over_epsilon.items()},
           "two_body_total_eV": score.two_body_total, "exact_two_body_total_eV": score.exact_two_body_total,
           "three_body_total_eV": score.three_body_total, "exact_three_body_total_eV": score.exact_three_body_total,
           "three_body_error": score.three_body_error, "meets_goals": score.meets_goals}
    for key, terms in (("2", recovery.pairs), ("3", recovery.triplets)):
        if terms is not None:
            s = terms.summary()
            out[f"terms_{key}"] = {k: s[k] for k in ("n", "pearson_r", "slope", "mae_eV", "rmse")}
    if recovery.atomwise is not None:
        out["atomwise"] = _agreement_dict(recovery.atomwise)
    return out


def _pair_epsilon(pair: tuple[int, int]) -> float:
    """Lorentz–Berthelot ε of a noble-gas species pair, eV."""
    from jaxrel.data.noble_gas import NOBLE_GASES
    eps = {p["Z"]: p["epsilon_eV"] for p in NOBLE_GASES.values()}
    return float(np.sqrt(eps[pair[0]] * eps[pair[1]]))


def _physics(recovery: Recovery, n_bins: int) -> PhysicsScore:
    """Score one decomposition's recovery against the goals of the module docstring."""
    pairs = recovery.pairs
    explained = recovery.pair_table
    cutoff = recovery.ground_truth_cutoff_A
    got = pair_relevance_curve(explained, r_max=cutoff, n_bins=n_bins)
    want = pair_relevance_curve(explained.with_relevance(pairs.exact), r_max=cutoff, n_bins=n_bins)
    rms = {}
    for key, curve in got.items():
        used = curve.count >= MIN_BIN_COUNT
        rms[key] = float(np.sqrt(np.mean((curve.mean[used] - want[key].mean[used]) ** 2)) / _pair_epsilon(key))
    two, exact_two = float(np.mean(pairs.recovered_total)), float(np.mean(pairs.exact_total))
    three = exact_three = error = None
    if recovery.triplets is not None:
        three = float(np.mean(recovery.triplets.recovered_total))
        exact_three = float(np.mean(recovery.triplets.exact_total))
        error = (abs(three - exact_three) / abs(exact_three) if recovery.three_body_in_truth
                 else abs(three) / abs(two))
    goal = THREE_BODY_GOAL if recovery.three_body_in_truth else NULL_GOAL
    meets = max(rms.values()) <= PAIR_CURVE_GOAL and (error is None or error <= goal)
    return PhysicsScore(rms, two, exact_two, three, exact_three, error, meets)


def _terms_agreement(a: Explanation, b: Explanation) -> dict[int, Agreement | None]:
    """Term-by-term agreement of two decompositions of the same frames, per shared order."""
    out = {}
    for n in sorted(set(a.tables) & set(b.tables)):
        ta, tb = a.tables[n], b.tables[n]
        idx, found = match_terms(ta.frame, ta.atoms, tb.frame, tb.atoms, a.n_atoms)
        try:
            out[n] = atomwise_comparison(ta.relevance[found], tb.relevance[idx[found]])
        except ValueError:
            out[n] = None
    return out


def compare_decompositions(explanations: Mapping[str, Explanation], truth: Mapping | None = None, *,
                           n_bins: int = 40) -> Audit:
    """Compare decompositions of the same frames with each other and with the exact terms.

    Args:
        explanations: {method: Explanation} of the same frames, e.g. "mbe" and GNN-LRP
            rule names (as :func:`run_audit` makes them).
        truth: the exact noble-gas decomposition (``np.load`` of a ``jaxrel generate
            noble-gas`` file) or None.
        n_bins: distance bins of the pair curves.

    Returns:
        :class:`Audit`.
    Raises:
        ValueError: no explanations, or explanations of different frames.
    """
    if not explanations:
        raise ValueError("no decompositions to compare")
    names = list(explanations)
    frames = explanations[names[0]].frames
    for name in names[1:]:
        if not np.array_equal(explanations[name].frames, frames):
            raise ValueError(f"{name} explains frames {explanations[name].frames.tolist()} but {names[0]} "
                             f"explains {frames.tolist()}: audit the same frames with every method")
    agreement = {(a, b): _terms_agreement(explanations[a], explanations[b])
                 for a, b in itertools.combinations(names, 2)}
    recovery = physics = three_body = None
    if truth is not None:
        recovery = {name: compare_with_ground_truth(e, truth, n_bins=n_bins) for name, e in explanations.items()}
        physics = {name: _physics(r, n_bins) for name, r in recovery.items()}
        three_body = bool(truth["three_body"])
    return Audit(dict(explanations), agreement, recovery, physics, three_body,
                 _verdict(explanations, agreement, physics, three_body))


def _verdict(explanations, agreement, physics, three_body) -> str:
    """One sentence: which decomposition to trust for this model, with the numbers behind it."""
    if physics:
        def badness(name):
            s = physics[name]
            goal = THREE_BODY_GOAL if three_body else NULL_GOAL
            return max(s.pair_curve_rms_over_epsilon.values()) / PAIR_CURVE_GOAL + (
                0.0 if s.three_body_error is None else s.three_body_error / goal)

        best = min(physics, key=badness)
        s = physics[best]
        pair = max(s.pair_curve_rms_over_epsilon.values())
        three = ("" if s.three_body_total is None else
                 f" and its 3-body total is {s.three_body_total:+.3f} eV per frame against the exact "
                 f"{s.exact_three_body_total:+.3f} eV")
        others = "; ".join(f"{name}: {max(physics[name].pair_curve_rms_over_epsilon.values()):.1%} of ε"
                           + ("" if physics[name].three_body_total is None
                              else f", 3-body {physics[name].three_body_total:+.3f} eV")
                           for name in physics if name != best)
        if s.meets_goals:
            head = f"Trust {best} for this model: its pair curve is within {pair:.1%} of ε (RMS){three}"
        else:
            head = (f"No decomposition of this model recovers the physics within the goals; the closest, {best}, "
                    f"has a pair-curve error of {pair:.1%} of ε{three}")
            if "mbe" in physics and not physics["mbe"].meets_goals:
                head += " — the model's own MBE misses too, so the model, not only the attribution, spreads the energy over body orders differently from the physics"
        return head + (f" (others: {others})." if others else ".")
    rules = [name for name in explanations if name != "mbe"]
    if "mbe" not in explanations or not rules:
        return "Without the many-body expansion or exact terms there is nothing to hold the relevance against."
    parts = []
    for rule in rules:
        orders = agreement.get((rule, "mbe")) or agreement.get(("mbe", rule)) or {}
        text = ", ".join(f"{n}-body r = {g.pearson_r:.2f}, slope {g.slope:.2f}" if g is not None
                         else f"{n}-body undefined" for n, g in sorted(orders.items()) if n > 1)
        parts.append(f"{rule}: {text}")
    return ("The MBE is this model's own functional decomposition; read GNN-LRP n-body relevance as the "
            "model's terms only at orders where it agrees with it (" + "; ".join(parts) + ").")


def decompose(potential, params, frames, *, max_order: int = 3, rules=AUDIT_RULES, forces: bool = True,
              frame_index=None, model_path=None, data_path=None, chunk_size: int | None = 256,
              progress: bool = False, mesh=None) -> dict[str, Explanation]:
    """The MBE (with body-order forces) and each GNN-LRP rule's explanation of the same frames
    (GNN-LRP frames split over ``mesh``'s devices, as :func:`jaxrel.relevance.explain`).

    Returns:
        {"mbe": Explanation, rule: Explanation, …}.
    Raises:
        ValueError: an unknown rule (before any computation), or as
            :func:`jaxrel.relevance.explain` and :func:`jaxrel.relevance.many_body_expansion`.
    """
    from jaxrel.nn import resolve_rules
    from jaxrel.relevance import explain, many_body_expansion

    for rule in rules:
        resolve_rules(rule)
    common = dict(max_order=max_order, frame_index=frame_index, model_path=model_path, data_path=data_path,
                  progress=progress)
    explanations = {"mbe": many_body_expansion(potential, params, frames, forces=forces, **common)}
    for rule in rules:
        explanations[rule] = explain(potential, params, frames, rules=rule, chunk_size=chunk_size, mesh=mesh,
                                     **common)
    return explanations


def run_audit(potential, params, frames, *, max_order: int = 3, rules=AUDIT_RULES, forces: bool = True,
              truth: Mapping | None = None, frame_index=None, model_path=None, data_path=None,
              chunk_size: int | None = 256, progress: bool = False, mesh=None) -> Audit:
    """Decompose the same frames with the MBE and each GNN-LRP rule (:func:`decompose`), then
    compare them with each other and with ``truth`` (:func:`compare_decompositions`).

    Args:
        potential, params: the model.
        frames: :class:`jaxrel.data.Frames` or :class:`~jaxrel.graph.Graph` (as
            :func:`jaxrel.relevance.explain`).
        max_order: highest body order (≤ n_interactions + 1 for GNN-LRP, ≤ 4 for the MBE).
        rules: GNN-LRP rule names (none for a model without message-passing layers).
        forces: split the model's forces by body order with the MBE.
        truth: exact noble-gas terms, or None.
        frame_index, model_path, data_path: recorded in every explanation.
        chunk_size: walk steps per chunk of the GNN-LRP block product (bounds memory).
        progress: progress bars.
        mesh: a one-axis device mesh the GNN-LRP frames are split over; None = every local device.

    Returns:
        :class:`Audit`.
    Raises:
        ValueError: as :func:`decompose`.
    """
    return compare_decompositions(decompose(potential, params, frames, max_order=max_order, rules=rules,
                                            forces=forces, frame_index=frame_index, model_path=model_path,
                                            data_path=data_path, chunk_size=chunk_size, progress=progress,
                                            mesh=mesh), truth)


def run_ensemble_audit(models: list[tuple], seeds: list[int], frames, *, truth: Mapping | None = None,
                       **options) -> Audit:
    """The audit of an ensemble of seeds: each member decomposed (:func:`decompose`), each method's
    members averaged term by term with their spread (:func:`jaxrel.relevance.ensemble_mean`), the
    means compared (:func:`compare_decompositions`) and every seed scored against ``truth``.

    Args:
        models: [(potential, params)] one per seed (as :func:`jaxrel.checkpoint.load_models` gives).
        seeds: their seeds.
        frames, truth, options: as :func:`run_audit` (``options``: max_order, rules, forces,
            frame_index, model_path, data_path, chunk_size, progress, mesh).

    Returns:
        :class:`Audit` with ``seeds`` and ``member_physics`` set.
    Raises:
        ValueError: as :func:`decompose` and :func:`~jaxrel.relevance.ensemble_mean`.
    """
    from jaxrel.relevance import ensemble_mean

    members = [decompose(potential, params, frames, **options) for potential, params in models]
    means = {name: ensemble_mean([m[name] for m in members], seeds) for name in members[0]}
    audit = compare_decompositions(means, truth)
    member_physics = None if truth is None else [compare_decompositions(m, truth).physics for m in members]
    verdict = audit.verdict
    if member_physics is not None and len(seeds) > 1:
        spread = "; ".join(f"{name} {np.mean([p[name].three_body_total for p in member_physics]):+.3f} ± "
                           f"{np.std([p[name].three_body_total for p in member_physics], ddof=1):.3f} eV"
                           for name in means if member_physics[0][name].three_body_total is not None)
        if spread:
            verdict = verdict[:-1] + f"; over {len(seeds)} seeds the 3-body total per frame is {spread}."
    return replace(audit, seeds=list(map(int, seeds)), member_physics=member_physics, verdict=verdict)


def with_diagnostics(audit: Audit, models: list[tuple], reference_positions, species, cell=None) -> Audit:
    """The audit with the models' stability diagnostics (:func:`jaxrel.analysis.diagnostics.ensemble_diagnostics`)
    added: dimer curves against the shortest distances of ``reference_positions`` (n_frames, n_atoms, 3) Å,
    decay length and body-order shares from the audit's MBE and its first GNN-LRP rule.

    Raises:
        ValueError: as :func:`~jaxrel.analysis.diagnostics.stability_diagnostics`.
    """
    rules = [name for name in audit.explanations if name != "mbe"]
    diagnostics, spread = ensemble_diagnostics(models, reference_positions, species, cell,
                                               explanations=audit.explanations, rules=rules[0] if rules else "gi")
    return replace(audit, diagnostics=diagnostics, diagnostics_spread=spread)


def _terms_against(audit: Audit, order: int, reference: str = "mbe") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{method: (reference method's terms, the method's terms)} of one order, matched term by term."""
    ref = audit.explanations[reference].tables[order]
    out = {}
    for name, e in audit.explanations.items():
        if name != reference:
            t = e.tables[order]
            idx, found = match_terms(t.frame, t.atoms, ref.frame, ref.atoms, e.n_atoms)
            out[name] = (ref.relevance[idx[found]], t.relevance[found])
    return out


def _pair_curves_by_method(audit: Audit):
    """({method: {pair: BinnedCurve}}, exact {pair: BinnedCurve} of the same pairs or None)."""
    first = next(iter(audit.explanations.values()))
    recovery = next(iter(audit.recovery.values())) if audit.recovery else None
    cutoff = recovery.ground_truth_cutoff_A if recovery else float(first.tables[2].distances.max())
    curves = {name: pair_relevance_curve(e.tables[2], r_max=cutoff) for name, e in audit.explanations.items()}
    exact = None if recovery is None else pair_relevance_curve(
        recovery.pair_table.with_relevance(recovery.pairs.exact), r_max=cutoff)
    return curves, exact


def write_audit(audit: Audit, out_dir) -> Written:
    """Write ``audit.json`` and the figures ``audit_body_order_totals.png``,
    ``audit_terms_order{n}.png`` (n ≥ 2, each method against the MBE), ``audit_pair_curves.png``,
    when the MBE has forces ``audit_body_order_forces.png``, and with diagnostics
    ``audit_dimer_curves.png`` into ``out_dir``.

    Returns:
        :class:`~jaxrel.analysis.write.Written` with ``results`` {"audit": the summary}.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    totals = {name: {**{f"{n}-body": e.order_totals(n) for n in sorted(e.tables) if n > 1},
                     "higher orders": e.higher_order_residual} for name, e in audit.explanations.items()}
    if audit.recovery:
        r = next(iter(audit.recovery.values()))
        totals["exact"] = {"2-body": r.pairs.exact_total, **({"3-body": r.triplets.exact_total} if r.triplets else {}),
                           "higher orders": np.zeros_like(r.pairs.exact_total)}
    figures = {"audit_body_order_totals": plot_method_totals(totals, out / "audit_body_order_totals.png"),
               "audit_pair_curves": plot_pair_curves_by_method(*_pair_curves_by_method(audit),
                                                               out / "audit_pair_curves.png")}
    mbe = audit.explanations.get("mbe")
    if mbe is not None and len(audit.explanations) > 1:
        for n in sorted(mbe.tables):
            if n > 1:
                figures[f"audit_terms_order{n}"] = plot_terms_against(
                    _terms_against(audit, n), out / f"audit_terms_order{n}.png",
                    xlabel=f"mbe {n}-body term (eV)", ylabel=f"{n}-body term of the method (eV)")
    if mbe is not None and mbe.forces is not None and mbe.max_order > 1:
        split = mbe.body_order_forces()
        parts = {f"{n + 1}-body": split[:, n] for n in range(1, split.shape[1])}
        figures["audit_body_order_forces"] = plot_force_components(
            {**parts, "higher orders": mbe.force_residual}, out / "audit_body_order_forces.png",
            title="forces split by body order (model's MBE)")
    if audit.diagnostics is not None:
        figures["audit_dimer_curves"] = plot_dimer_curves(audit.diagnostics.curves, out / "audit_dimer_curves.png",
                                                          rule=audit.diagnostics.rule)
    summary = audit.summary()
    return Written({"audit": summary}, figures, {"audit": write_json(out / "audit.json", summary)})
