"""A self-contained HTML report of an explained potential (``jaxrel report``).

The page embeds every figure as a base64 PNG (it opens anywhere, with no network and no
other file), and links the same PNGs, CSV tables and JSON written beside it under
``figures/``. Sections: conservation (energy = species shifts + Σ relevance + what
biases absorb), body-order shares, 2-body relevance against distance with the radial
distribution, interaction strengths and decay lengths, 3-body angular and distance
profiles, and, when the explained frames come from a ground-truth file of
``jaxrel generate noble-gas``, the recovery of the exact pair and triplet energies and
local energies (:mod:`jaxrel.recovery`).
"""

from __future__ import annotations

import base64
import datetime
import html
import json
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from jaxrel.analysis import Explained, load_explained, species_label, write_analysis

FIGURE_CAPTIONS = {
    "body_order_shares": "Share of the relevance carried by each body order (signed: share of the "
                         "energy; |R|: share of the total magnitude), pooled over frames.",
    "pair_curves": "Mean 2-body relevance R₂ against pair distance (band: ± standard error of the "
                   "mean), with the radial distribution on the right axis (Bonneau et al. 2024, "
                   "arXiv:2407.04526).",
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


def _figure(folder: Path, relative: str, name: str) -> str:
    data = base64.b64encode((folder / relative).read_bytes()).decode("ascii")
    caption = html.escape(FIGURE_CAPTIONS.get(name, name))
    return (f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'
            f'<figcaption>{caption} <a href="figures/{html.escape(relative)}">PNG</a></figcaption></figure>')


def _conservation_section(summary: dict) -> str:
    rows = [[f["frame"], f["energy_eV"], f["species_shift_eV"], f["sum_relevance_eV"],
             f["conservation_error_eV"], f["higher_order_residual_eV"], f["seconds"]]
            for f in summary["frames"]]
    worst = max(abs(f["conservation_error_eV"]) for f in summary["frames"])
    return ("<h2>Conservation</h2><p class='note'>E = species shifts + Σ walk relevances + "
            "conservation error. Σ walk relevances is the unmasked gradient × input; the "
            "conservation error is what the network's biases and the rule's stabilisers absorb "
            "(0 for GI rules on bias-free layers). The higher-order residual is the relevance of "
            f"body orders above {summary.get('max_order', '?')}. Largest |conservation error|: "
            f"{worst:.4g} eV.</p>"
            + _table(["frame", "E (eV)", "species shifts (eV)", "Σ relevance (eV)",
                      "conservation error (eV)", "higher-order residual (eV)", "seconds"], rows))


def _shares_table(shares: dict) -> str:
    names = [str(n) for n in shares["orders"]] + ["residual"]
    rows = [[f"{n}-body" if n != "residual" else "higher orders", shares["energy_share"][n]["pooled"],
             shares["abs_share"][n]["pooled"]] for n in names]
    return _table(["body order", "share of Σ R (signed, pooled)", "share of Σ |R| (pooled)"], rows)


def _strength_table(strength: dict, names) -> str:
    rows = [[species_label(tuple(int(z) for z in key.split("-")), names), s["count"],
             s["mean_abs_eV"] * 1e3, s["decay_length_A"], s["n_fit_bins"]] for key, s in sorted(strength.items())]
    return _table(["species pair", "terms", "mean |R₂| (meV)", "decay length (Å)",
                   "distance bins in the fit (a decay length from 2–3 bins is rough)"], rows)


def _recovery_section(recovery: dict, figures: Path, written: dict) -> str:
    parts = ["<h2>Recovery of the exact physics</h2><p class='note'>The explained frames come "
             "from a ground-truth liquid (Lennard-Jones pairs"
             + (" plus Axilrod–Teller–Muto triplets" if recovery["three_body_in_truth"] else
                ", three-body term switched off: the null test") +
             "). Each relevance term is matched with the exact term of the same atoms. These are "
             "measurements, not pass/fail gates.</p>"]
    rows = []
    for name, label in (("pairs", "2-body terms vs exact pair energies"),
                        ("triplets", "3-body terms vs exact triplet energies")):
        if name in recovery:
            s = recovery[name]
            rows.append([label, s["n"], s["mae_eV"] * 1e3, s["pearson_r"], s["slope"],
                         np.mean(s["recovered_total_eV"]), np.mean(s["exact_total_eV"])])
    if "atomwise" in recovery:
        a = recovery["atomwise"]
        rows.append(["atomwise E_i vs exact local energies", a["n"], a["mae"] * 1e3, a["pearson_r"],
                     a["slope"], None, None])
    parts.append(_table(["comparison", "n", "MAE (meV)", "Pearson r", "slope",
                         "recovered total per frame (eV)", "exact total per frame (eV)"], rows))
    parts += [_figure(figures, rel, name) for name, rel in written["figures"].items()]
    return "".join(parts)


def build_report(explained_dir, out_dir=None, *, model_dir=None, data_path=None,
                 title: str | None = None, notes: list[str] | None = None,
                 names: dict[int, str] | None = None, progress: bool = False) -> dict:
    """Analyse a ``jaxrel explain`` folder and write ``report.html`` with its figures.

    Args:
        explained_dir: folder with ``nbody.npz`` and ``summary.json``.
        out_dir: where ``report.html`` and ``figures/`` go (default: ``explained_dir``).
        model_dir, data_path: the model and data that were explained (default: the paths
            recorded in summary.json). When the data is a ground-truth file of
            ``jaxrel generate noble-gas``, the recovery section is added; the model, if it
            can be loaded, adds the atomwise-energy comparison.
        title: page title.
        notes: extra paragraphs (plain text) shown under the title.
        names: species labels {Z: label} (e.g. CG bead names).
        progress: show a progress bar over the three steps (analyses, recovery, page).

    Returns:
        {"report": path of report.html, "analysis": analysis.json contents,
         "recovery": recovery result without arrays (or None), "figures": {name: path}}.
    Raises:
        FileNotFoundError, ValueError: a missing or corrupt explained folder (see
            :func:`jaxrel.analysis.load_explained`).
    """
    bar = tqdm(total=3, desc="report", unit="step", disable=not progress)
    explained = load_explained(explained_dir)
    out = Path(out_dir if out_dir is not None else explained_dir)
    figures = out / "figures"
    bar.set_postfix_str("analyses")
    written = write_analysis(explained, figures, names=names)
    analysis = json.loads((figures / written["json"]).read_text())
    summary = explained.summary
    bar.update()
    bar.set_postfix_str("recovery")
    recovery, recovery_written = _recovery(explained, summary, model_dir, data_path, figures)
    bar.update()
    bar.set_postfix_str("page")

    title = title or f"jaxrel report: {Path(summary.get('model', 'model')).parent.name or 'model'}"
    n_frames = len(summary["frames"])
    meta = [["model", summary.get("model")], ["data", summary.get("data")],
            ["rule", summary.get("rule")], ["highest body order", summary.get("max_order")],
            ["frames explained", n_frames],
            ["mean seconds per frame", float(np.mean([f["seconds"] for f in summary["frames"]]))],
            ["generated", datetime.datetime.now().isoformat(timespec="seconds")]]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    parts += [f"<p class='note'>{html.escape(n)}</p>" for n in notes or []]
    parts.append(_table(["", ""], meta))
    parts.append(_conservation_section(summary))
    parts.append("<h2>Body orders</h2>" + _shares_table(analysis["body_order_shares"]))
    fig = written["figures"]
    parts.append(_figure(figures, fig["body_order_shares"], "body_order_shares"))
    if "pair_curves" in fig:
        parts.append("<h2>2-body relevance</h2>" + _figure(figures, fig["pair_curves"], "pair_curves"))
        parts.append("<h3>Interaction strength per species pair</h3>"
                     + _strength_table(analysis["interaction_strength"], names)
                     + _figure(figures, fig["decay"], "decay"))
    if "triplet_angles" in fig:
        parts.append("<h2>3-body relevance</h2>" + _figure(figures, fig["triplet_angles"], "triplet_angles")
                     + _figure(figures, fig["triplet_distances"], "triplet_distances"))
    if recovery is not None:
        parts.append(_recovery_section(recovery, figures, recovery_written))
    links = sorted({*written["tables"].values(), written["json"],
                    *(["recovery.json"] if recovery is not None else [])})
    parts.append("<h2>Data files</h2><ul>" + "".join(
        f"<li><a href='figures/{html.escape(p)}'>{html.escape(p)}</a></li>" for p in links) + "</ul>")
    parts.append("</body></html>")
    report = out / "report.html"
    report.write_text("".join(parts), encoding="utf-8")
    bar.update()
    bar.close()
    all_figures = {**fig, **(recovery_written["figures"] if recovery_written else {})}
    return {"report": report, "analysis": analysis, "recovery": recovery,
            "figures": {k: figures / v for k, v in all_figures.items()}}


def _recovery(explained: Explained, summary: dict, model_dir, data_path, figures: Path):
    """Recovery result and its written figures when the data is ground truth, else (None, None)."""
    from jaxrel.recovery import compare_with_ground_truth, is_ground_truth, model_atomwise_energies, write_recovery

    data_path = data_path or summary.get("data")
    if data_path is None or not Path(data_path).is_file() or Path(data_path).suffix != ".npz":
        return None, None
    with np.load(data_path) as npz:
        if not is_ground_truth(npz):
            return None, None
        truth = {k: npz[k] for k in npz.files}
    model_dir = model_dir or summary.get("model")
    atomwise = None
    if model_dir is not None and Path(model_dir).is_dir():
        from jaxrel.train import load_checkpoint

        potential, params, _ = load_checkpoint(model_dir)
        atomwise = model_atomwise_energies(potential, params, explained)
    result = compare_with_ground_truth(explained, truth, atomwise)
    written = write_recovery(result, figures)
    return json.loads((figures / written["json"]).read_text()), written
