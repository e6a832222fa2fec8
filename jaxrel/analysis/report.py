"""A self-contained HTML report of an explanation (``jaxrel report``).

The page embeds every figure as a base64 PNG (it opens anywhere, with no network and no
other file), and links the same PNGs, CSV tables and JSON written beside it under
``figures/``. Sections: conservation (energy = species shifts + Σ relevance + what
biases absorb), body-order shares, 2-body relevance against distance with the radial
distribution, interaction strengths and decay lengths, 3-body angular and distance
profiles, the faithfulness audit (MBE beside GNN-LRP, :mod:`jaxrel.analysis.faithfulness`)
when one is given, and, when the explained frames come from a ground-truth file of
``jaxrel generate noble-gas``, the recovery of the exact pair and triplet energies and
local energies (:mod:`jaxrel.analysis.recovery`).

The report works from an :class:`~jaxrel.relevance.Explanation` in memory and the results
the writers return; it never reloads the model or reads back a file it wrote.
"""

from __future__ import annotations

import base64
import datetime
import html
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from jaxrel.analysis.chemistry import ChemicalInsight, write_chemical_insight
from jaxrel.analysis.faithfulness import Audit, write_audit
from jaxrel.analysis.numerics import Shares, Strength, species_label
from jaxrel.analysis.recovery import Recovery, compare_with_ground_truth, load_ground_truth, write_recovery
from jaxrel.analysis.write import Written, write_analysis
from jaxrel.files import atomic_write
from jaxrel.relevance import Explanation

FIGURE_CAPTIONS = {
    "body_order_shares": "Share of the relevance carried by each body order (signed: share of the "
                         "energy; |R|: share of the total magnitude), pooled over frames.",
    "pair_curves": "Mean 2-body relevance R₂ against pair distance (band: ± standard error of the "
                   "mean), with the radial distribution on the right axis (Bonneau et al. 2024, "
                   "arXiv:2407.04526).",
    "pair_curves_network": "The same 2-body relevance without the model's fixed repulsive prior: what the "
                           "network itself learned (the prior is an exact pair term, listed apart).",
    "decay": "Mean |R₂| against distance on a log scale and the fitted exponential decay "
             "(Esders et al. 2025, arXiv:2410.13833).",
    "triplet_angles": "Mean 3-body relevance against the angle at the centre atom (the vertex "
                      "opposite the longest side).",
    "triplet_distances": "Mean 3-body relevance against the shortest side of the triplet.",
    "atomwise": "Per-atom relevance energy against the reference local energy.",
    "recovery_pair_curves": "Recovered mean R₂(r) (points, ± s.e.m.) against the exact pair "
                            "potential φ(r) (dashed).",
    "recovery_pairs": "Every pair: its 2-body relevance against its exact pair energy.",
    "recovery_triplets": "Every triplet: its 3-body relevance against its exact Axilrod–Teller–Muto "
                         "energy (0 for triplets that are not a triangle inside the cutoff).",
    "recovery_triplet_angles": "Mean 3-body relevance (points, ± s.e.m.) and mean exact "
                               "Axilrod–Teller–Muto energy (dashed) of the same triplets against the "
                               "angle at the centre atom.",
    "recovery_three_body_totals": "Per frame: Σ of the 3-body relevance against the exact 3-body energy.",
    "audit_body_order_totals": "Mean total per frame of each body order and of the orders above the "
                               "highest one, by method (bars: spread over frames); 'exact' is the physics.",
    "audit_pair_curves": "Mean 2-body term against distance by method; dashed: the exact pair energies "
                         "of the same pairs.",
    "audit_terms_order2": "Every pair: each GNN-LRP rule's 2-body term against the model's own MBE term.",
    "audit_terms_order3": "Every triplet: each GNN-LRP rule's 3-body term against the model's own MBE term.",
    "audit_terms_order4": "Every 4-atom set: each GNN-LRP rule's 4-body term against the MBE term.",
    "audit_body_order_forces": "Force components split by body order with the model's MBE "
                               "(F_i = Σ_n F_i⁽ⁿ⁾ + higher orders).",
    "chemistry_locality": "How many of a frame's atoms carry 90 % of Σ|R_i|, R_i the relevance of the walks "
                          "that start at atom i, as a share of the frame's atoms.",
    "chemistry_charges": "The model's per-atom quantity against the reference partial charges, by element.",
    "chempot_slice": "Local chemical potential Φ(r) = E_probe(r) − E_probe(∞) on the plane of the molecule "
                     "(Schütt et al. 2018, arXiv:1806.10349).",
    "chempot_iso": "Isosurfaces of the local chemical potential Φ(r).",
    "recovery_atomwise": "The model's atomwise energies E_i against the exact local energies "
                         "(½ Σ own pairs + ⅓ Σ own triplets; Uhlig, Tovey, Holm 2024, arXiv:2403.00377).",
}

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
h1{font-size:1.6rem}h2{font-size:1.25rem;border-bottom:1px solid #ccc;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
td,th{border:1px solid #ccc;padding:.2rem .5rem;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}
figure{margin:1rem 0}img{max-width:100%}figcaption{font-size:.85rem;color:#555}
.note{font-size:.9rem;color:#444}code{background:#f3f3f3;padding:0 .2rem}
"""


FILES = ("report.html", "figures")
"""What :func:`build_report` writes into its folder."""


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"
    return str(value)


def _figure(path: Path, name: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    caption = html.escape(FIGURE_CAPTIONS.get(name, name))
    return (f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'
            f'<figcaption>{caption} <a href="figures/{html.escape(path.name)}">PNG</a></figcaption></figure>')


def _conservation_section(explanation: Explanation) -> str:
    e = explanation
    rows = [[int(f), e.energy[k], e.species_shift[k], e.sum_relevance[k], e.conservation_error[k],
             e.higher_order_residual[k], e.seconds[k]] for k, f in enumerate(e.frames)]
    worst = float(np.abs(e.conservation_error).max())
    return ("<h2>Conservation</h2><p class='note'>E = species shifts + Σ walk relevances + "
            "conservation error. Σ walk relevances is the unmasked gradient × input; the "
            "conservation error is what the network's biases and the rule's stabilisers absorb "
            "(0 for GI rules on bias-free layers). The higher-order residual is the relevance of "
            f"body orders above {e.max_order}. Largest |conservation error|: "
            f"{worst:.4g} eV.</p>"
            + _table(["frame", "E (eV)", "species shifts (eV)", "Σ relevance (eV)",
                      "conservation error (eV)", "higher-order residual (eV)", "seconds"], rows))


def _shares_table(shares: Shares) -> str:
    names = [str(n) for n in shares.orders] + ["residual"]
    rows = [[f"{n}-body" if n != "residual" else "higher orders", shares.energy_share[n].pooled,
             shares.abs_share[n].pooled] for n in names]
    return _table(["body order", "share of Σ R (signed, pooled)", "share of Σ |R| (pooled)"], rows)


def _strength_table(strength: dict[tuple[int, int], Strength], names) -> str:
    rows = [[species_label(key, names), s.count, s.mean_abs_eV * 1e3, s.decay_length_A, s.n_fit_bins]
            for key, s in sorted(strength.items())]
    return _table(["species pair", "terms", "mean |R₂| (meV)", "decay length (Å)",
                   "distance bins in the fit (a decay length from 2–3 bins is rough)"], rows)


def _recovery_section(recovery: Recovery, figures: dict[str, Path]) -> str:
    parts = ["<h2>Recovery of the exact physics</h2><p class='note'>The explained frames come "
             "from a ground-truth liquid (Lennard-Jones pairs"
             + (" plus Axilrod–Teller–Muto triplets" if recovery.three_body_in_truth else
                ", three-body term switched off: the null test") +
             "). Each relevance term is matched with the exact term of the same atoms. These are "
             "measurements, not pass/fail gates.</p>"]
    rows = []
    for terms, label in ((recovery.pairs, "2-body terms vs exact pair energies"),
                         (recovery.triplets, "3-body terms vs exact triplet energies")):
        if terms is not None:
            s = terms.summary()
            rows.append([label, s["n"], s["mae_eV"] * 1e3, s["pearson_r"], s["slope"],
                         np.mean(terms.recovered_total), np.mean(terms.exact_total)])
    if recovery.atomwise is not None:
        a = recovery.atomwise
        rows.append(["atomwise E_i vs exact local energies", a.n, a.mae * 1e3, a.pearson_r, a.slope, None, None])
    parts.append(_table(["comparison", "n", "MAE (meV)", "Pearson r", "slope",
                         "recovered total per frame (eV)", "exact total per frame (eV)"], rows))
    parts += [_figure(path, name) for name, path in figures.items()]
    return "".join(parts)


def _faithfulness_section(audit: Audit | None, written: Written | None) -> str:
    """Which decomposition to trust, with the numbers (or a warning that nobody checked);
    ``written`` is what :func:`write_audit` returned for ``audit``."""
    if audit is None:
        return ("<h2>Faithfulness</h2><p class='note'><b>Not audited.</b> The relevance terms below are "
                "the model's GNN-LRP decomposition. They have not been held against the model's own "
                "many-body expansion, and relevance can differ from it and from the physics in size and "
                "sign. Run <code>jaxrel audit</code> before reading them as physics.</p>")
    parts = [f"<h2>Faithfulness</h2><p><b>{html.escape(audit.verdict)}</b></p>"
             "<p class='note'>The MBE evaluates the model on every connected set of atoms alone and "
             "inverts (Chong et al. 2025, arXiv:2509.14146): it is the model's own body-order "
             "decomposition. GNN-LRP against the MBE says whether the attribution reports the model; "
             "the MBE against exact terms says whether the model learned the physics. Goals: pair curve "
             "within 5 % of ε (RMS over distance bins); 3-body total within 10 % of the exact one "
             "(without a 3-body term in the physics: |Σ 3-body| below 1 % of |Σ 2-body|).</p>"]
    summary, figures = written.results["audit"], written.figures
    rows = []
    for name, m in summary["methods"].items():
        totals = m["body_order_totals_eV"]
        row = [name] + [float(np.mean(totals[str(n)])) if str(n) in totals else None for n in (2, 3)]
        row.append(float(np.mean(m["truncation_residual_eV"])))
        if audit.physics is not None:
            p = audit.physics[name]
            row += [max(p.pair_curve_rms_over_epsilon.values()), p.three_body_error, "yes" if p.meets_goals else "no"]
        rows.append(row)
    header = ["method", "Σ 2-body per frame (eV)", "Σ 3-body per frame (eV)", "higher orders (eV)"]
    if audit.physics is not None:
        header += ["pair curve RMS / ε", "3-body error (fraction)", "meets goals"]
        r = next(iter(audit.recovery.values()))
        exact = ["exact", float(np.mean(r.pairs.exact_total)),
                 None if r.triplets is None else float(np.mean(r.triplets.exact_total)), None, 0.0, 0.0, ""]
        rows.append(exact)
    parts.append(_table(header, rows))
    if "seeds" in summary:
        seed_rows = [[name, int(n), v["mean_abs_term_eV"], v["mean_spread_eV"], v["relative_spread"],
                      v["resolved_fraction"]]
                     for name, orders in summary["seeds"]["methods"].items()
                     for n, v in orders.items() if n.isdigit() and int(n) > 1]
        parts.append(f"<h3>Stability over {len(summary['seeds']['seeds'])} seeds</h3><p class='note'>Terms are "
                     "means over the ensemble's seeds; a term is resolved when its mean is larger than twice its "
                     "spread (standard deviation over the seeds).</p>"
                     + _table(["method", "body order", "mean |term| (eV)", "mean spread (eV)", "spread / |term|",
                               "resolved fraction"], seed_rows))
    agree = [[f"{a['a']} vs {a['b']}", a["order"], a["pearson_r"], a.get("slope"), a.get("mae_eV")]
             for a in summary["agreement"] if a["order"] > 1]
    if agree:
        parts.append("<h3>Term-by-term agreement between methods</h3>"
                     + _table(["methods", "body order", "Pearson r", "slope", "MAE (eV)"], agree))
    if "stability_diagnostics" in summary:
        parts.append(_diagnostics_table(summary["stability_diagnostics"]))
    parts += [_figure(path, name) for name, path in figures.items()]
    return "".join(parts)


def _diagnostics_table(diagnostics: dict) -> str:
    """The stability diagnostics (:mod:`jaxrel.analysis.diagnostics`): value, seed spread, definition."""
    spread = diagnostics.get("seed_spread") or {}
    rows = [[name, value, spread.get(name), diagnostics["definitions"][name]]
            for name, value in diagnostics["values"].items()]
    pairs = [[label, p["reference_min_A"], p["mbe_inner_well_eV"], p["relevance_inner_well_eV"]]
             for label, p in diagnostics["species_pairs"].items()]
    return ("<h3>Stability diagnostics</h3><p class='note'>Numbers read off the explanation that may warn "
            "of MD failure (Fu et al. 2023, arXiv:2210.07237; Esders et al. 2025, arXiv:2410.13833). An inner "
            "well is energy the model releases when a pair moves closer than the reference data ever brought it: "
            "MD at a temperature whose k_B T is comparable can fall into it. How well each number predicts "
            "instability was measured on a population of rMD17 models (README, “Explanations and MD "
            "stability”); none is a guarantee.</p>"
            + _table(["diagnostic", "value", "seed spread", "definition"], rows)
            + _table(["species pair", "r_ref (Å)", "MBE inner well (eV)", "GNN-LRP inner well (eV)"], pairs))


def build_report(explanation, out_dir=None, *, data_path=None, title: str | None = None,
                 notes: list[str] | None = None, names: dict[int, str] | None = None,
                 audit: Audit | None = None, chemistry: ChemicalInsight | None = None, chempot=None,
                 progress: bool = False) -> dict:
    """Analyse an explanation and write ``report.html`` with its figures.

    Args:
        explanation: an :class:`~jaxrel.relevance.Explanation`, or the folder one was saved in.
        out_dir: where ``report.html`` and ``figures/`` go (default: the explanation's folder;
            required for an explanation in memory).
        data_path: the data that was explained (default: the path in the explanation's
            metadata). When it is a ground-truth file of ``jaxrel generate noble-gas``, the
            recovery section is added (with the model's atomwise energies stored in the
            explanation).
        title: page title.
        notes: extra paragraphs (plain text) shown under the title.
        names: species labels {Z: label} (e.g. CG bead names).
        audit: a :class:`~jaxrel.analysis.faithfulness.Audit` of the same frames; its verdict,
            tables and figures make the "Faithfulness" section (without one the section says
            that the relevance was not audited).
        chemistry: a :class:`~jaxrel.analysis.chemistry.ChemicalInsight` of the model on the same
            frames: the "Chemistry" section (locality of the relevance, per-atom quantities against
            partial charges per element).
        chempot: a folder written by ``jaxrel chempot``
            (:func:`~jaxrel.analysis.chempot.write_chemical_potential`): its figures and summary go
            into the "Chemistry" section.
        progress: show a progress bar over the three steps (analyses, recovery, page).

    Returns:
        {"report": path of report.html, "analysis": the analysis results
        (:class:`~jaxrel.analysis.write.Written`.results), "recovery": the
        :class:`~jaxrel.analysis.recovery.Recovery` (or None), "figures": {name: path},
        "audit": the audit's summary as written to figures/audit.json (or None)}.
    Raises:
        FileNotFoundError, ValueError: a missing or corrupt explanation folder (see
            :meth:`Explanation.load`), or no ``out_dir`` for an explanation in memory.
    """
    if not isinstance(explanation, Explanation):
        out_dir = explanation if out_dir is None else out_dir
        explanation = Explanation.load(explanation)
    if out_dir is None:
        raise ValueError("build_report needs out_dir for an explanation in memory: say where report.html goes")
    chempot_sources = _chempot_figures(chempot) if chempot is not None else []
    bar = tqdm(total=3, desc="report", unit="step", disable=not progress)
    out = Path(out_dir)
    figures = out / "figures"
    bar.set_postfix_str("analyses")
    written = write_analysis(explanation, figures, names=names)
    analysis = written.results
    bar.update()
    bar.set_postfix_str("recovery")
    recovery = _recovery(explanation, data_path)
    recovery_written = write_recovery(recovery, figures) if recovery is not None else None
    bar.update()
    bar.set_postfix_str("page")

    meta = explanation.metadata
    title = title or f"jaxrel report: {Path(meta.get('model') or 'model').parent.name or 'model'}"
    config = meta.get("model_config") or {}
    target = config.get("target", "energy")
    meta_rows = [["model", meta.get("model")], ["data", meta.get("data")], ["rule", meta.get("rule")],
                 ["highest body order", explanation.max_order], ["frames explained", len(explanation.frames)],
                 ["mean seconds per frame", float(np.mean(explanation.seconds))],
                 ["jaxrel version", meta.get("jaxrel_version")],
                 ["generated", datetime.datetime.now().isoformat(timespec="seconds")]]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    parts += [f"<p class='note'>{html.escape(n)}</p>" for n in notes or []]
    if target != "energy":
        unit = "e·Å, the dipole's magnitude" if target == "dipole" else "eV"
        parts.append(f"<p class='note'>This model predicts the {html.escape(target)} with the "
                     f"{html.escape(config.get('readout', 'sum'))} readout: below, “energy” and every relevance "
                     f"mean that prediction and its parts ({unit}).</p>")
    parts.append(_table(["", ""], meta_rows))
    audit_written = write_audit(audit, figures) if audit is not None else None
    parts.append(_faithfulness_section(audit, audit_written))
    parts.append(_conservation_section(explanation))
    parts.append("<h2>Body orders</h2>" + _shares_table(analysis["body_order_shares"]))
    fig = written.figures
    parts.append(_figure(fig["body_order_shares"], "body_order_shares"))
    if "pair_curves" in fig:
        parts.append("<h2>2-body relevance</h2>" + _figure(fig["pair_curves"], "pair_curves"))
        parts.append("<h3>Interaction strength per species pair</h3>"
                     + _strength_table(analysis["interaction_strength"], names)
                     + _figure(fig["decay"], "decay"))
    if "triplet_angles" in fig:
        parts.append("<h2>3-body relevance</h2>" + _figure(fig["triplet_angles"], "triplet_angles")
                     + _figure(fig["triplet_distances"], "triplet_distances"))
    if recovery is not None:
        parts.append(_recovery_section(recovery, recovery_written.figures))
    chemistry_written = write_chemical_insight(chemistry, figures) if chemistry is not None else None
    chempot_copies = [atomic_write(figures / p.name, p.read_bytes()) for p in chempot_sources]
    if chemistry is not None or chempot_copies:
        parts.append(_chemistry_section(chemistry, chemistry_written, chempot_copies, names))
    files = {**written.files, **(recovery_written.files if recovery_written else {}),
             **(audit_written.files if audit_written else {}),
             **({"chemistry": chemistry_written["json"]} if chemistry_written else {})}
    links = sorted(p.name for p in files.values())
    parts.append("<h2>Data files</h2><ul>" + "".join(
        f"<li><a href='figures/{html.escape(p)}'>{html.escape(p)}</a></li>" for p in links) + "</ul>")
    parts.append("</body></html>")
    report = out / "report.html"
    atomic_write(report, "".join(parts))
    bar.update()
    bar.close()
    all_figures = {**fig, **(recovery_written.figures if recovery_written else {}),
                   **(audit_written.figures if audit_written else {}),
                   **({f"chemistry_{k}": p for k, p in chemistry_written.items() if k != "json"}
                      if chemistry_written else {})}
    return {"report": report, "analysis": analysis, "recovery": recovery, "figures": all_figures,
            "audit": audit_written.results["audit"] if audit_written else None}


def _chemistry_section(chemistry: ChemicalInsight | None, written: dict | None, chempot: list[Path],
                       names) -> str:
    """Locality and per-element charges of :func:`~jaxrel.analysis.chemistry.chemical_insight`, and the
    figures of a ``jaxrel chempot`` folder."""
    parts = ["<h2>Chemistry</h2>"]
    if chemistry is not None:
        share, keep = chemistry.share_of_atoms, chemistry.has_relevance
        locality = ("No explained frame has relevance on any atom (e.g. the zero dipole of a symmetric "
                    "molecule), so locality is undefined." if not keep.any() else
                    f"On average {chemistry.atoms_for_share[keep].mean():.1f} of {chemistry.n_atoms[keep].mean():.1f} "
                    f"atoms ({100 * share.mean():.0f} %, median {100 * np.median(share):.0f} %) carry 90 % of the "
                    "relevance Σ|R_i| (R_i: the walks that start at atom i; Esders et al. 2025, arXiv:2410.13833)"
                    + (f"; {int((~keep).sum())} frames without any relevance are left out." if not keep.all() else "."))
        parts.append(f"<p>The model predicts the <b>{html.escape(chemistry.target)}</b> with the "
                     f"<b>{html.escape(chemistry.readout)}</b> readout. {html.escape(locality)}</p>")
        if keep.any():
            parts.append(_figure(written["locality"], "chemistry_locality"))
        if chemistry.charges:
            rows = [[species_label((z,), names), a.n, a.pearson_r, a.mae if chemistry.target == "dipole" else None]
                    for z, a in chemistry.charges.items()]
            parts.append(f"<h3>{html.escape(chemistry.quantity)} against the reference partial charges</h3>"
                         + _table(["element", "atoms", "Pearson r", "MAE (e)"], rows)
                         + _figure(written["charges"], "chemistry_charges"))
        elif chemistry.reference is None:
            parts.append("<p class='note'>The data has no partial charges to compare with.</p>")
    if chempot:
        parts.append("<h3>Local chemical potential</h3>"
                     + "".join(_figure(p, "chempot_" + p.stem.rsplit("_", 1)[1]) for p in chempot))
    return "".join(parts)


def _chempot_figures(folder) -> list[Path]:
    """The slice and isosurface PNGs of a ``jaxrel chempot`` folder (``ValueError`` if it has none)."""
    folder = Path(folder)
    found = sorted(folder.glob("chempot_*_slice.png")) + sorted(folder.glob("chempot_*_iso.png"))
    if not found:
        raise ValueError(f"--chempot {folder} holds no chempot_*_slice.png or chempot_*_iso.png; give a folder "
                         "written by 'jaxrel chempot'")
    return found


def _recovery(explanation: Explanation, data_path) -> Recovery | None:
    """The recovery of the ground truth when the explained data is a noble-gas file, else None."""
    truth = load_ground_truth(data_path or explanation.metadata.get("data"))
    return None if truth is None else compare_with_ground_truth(explanation, truth)
