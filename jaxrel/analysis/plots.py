"""Figures of the analyses (matplotlib, PNG): one module shared by the analysis, the
recovery of ground truth and the report.

Every function takes results of :mod:`jaxrel.analysis.numerics` (or arrays), writes one
PNG at ``FIGURE_DPI`` and returns its path.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from jaxrel.analysis.numerics import (BinnedCurve, Shares, Strength, atomwise_comparison, per_species_agreement,
                                      species_label)
from jaxrel.files import atomic_write

FIGURE_DPI = 150


def save_figure(fig: Figure, path) -> Path:
    """Write ``fig`` as a PNG at ``FIGURE_DPI`` to ``path`` (folders created), atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=FIGURE_DPI, bbox_inches="tight")
    return atomic_write(path, png.getvalue())


def _colour(i: int) -> str:
    return f"C{i % 10}"


def plot_pair_curves(curves: dict[tuple[int, int], BinnedCurve], path, *, rdf: dict | None = None,
                     reference: dict | None = None,
                     title: str = "", names: dict[int, str] | None = None,
                     rdf_label: str = "g(r)") -> Path:
    """Mean 2-body relevance ± standard error against distance, one colour per species pair.

    Args:
        curves: :func:`pair_relevance_curve` output (empty bins are not drawn).
        path: PNG to write.
        rdf: optional {pair: (r Å, g)} from :func:`jaxrel.geometry.partial_rdf`, dotted on a twin axis.
        reference: optional {pair: (r Å, energy eV)}, e.g. the exact pair potential, dashed.
        names: species labels {Z: label}.
        rdf_label: twin-axis label (see :func:`rdf_label`).

    Returns:
        ``path`` as a Path.
    """
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot()
    twin = ax.twinx() if rdf else None
    for i, (key, c) in enumerate(sorted(curves.items())):
        shown = c.count > 0
        r, mean, sem = c.x[shown], c.mean[shown], c.sem[shown]
        ax.plot(r, mean, "o-", ms=3, color=_colour(i), label=f"{species_label(key, names)} relevance")
        ax.fill_between(r, mean - sem, mean + sem, color=_colour(i), alpha=0.25, lw=0)
        if reference and key in reference:
            ax.plot(*reference[key], "--", color=_colour(i), label=f"{species_label(key, names)} reference")
        if twin is not None and key in rdf:
            twin.plot(*rdf[key], ":", color=_colour(i), lw=1.2)
    ax.axhline(0.0, color="0.6", lw=0.8)
    ax.set_xlabel("distance r (Å)")
    ax.set_ylabel("mean 2-body relevance R₂ (eV)")
    handles, labels = ax.get_legend_handles_labels()
    if twin is not None:
        twin.set_ylabel(rdf_label)
        handles.append(ax.plot([], [], "k:", lw=1.2)[0])
        labels.append(f"dotted: {rdf_label}")
    ax.legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.18 if twin else 1.02, 1.0))
    ax.set_title(title)
    return save_figure(fig, path)


def plot_triplet_profiles(profiles: dict[tuple[int, int, int], BinnedCurve], path, *,
                          xlabel: str = "angle at the centre atom (deg)",
                          names: dict[int, str] | None = None, reference: dict | None = None) -> Path:
    """Mean 3-body relevance ± standard error per species triplet.

    Args:
        profiles: :func:`triplet_angle_profile` or :func:`triplet_distance_profile` output.
        path: PNG to write.
        xlabel: x-axis label (say "shortest side (Å)" for distance profiles).
        names: species labels {Z: label}.
        reference: optional {triplet: (x, mean energy eV)}, e.g. the exact 3-body energies
            of the same triplets, dashed.

    Returns:
        ``path`` as a Path.
    """
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot()
    for i, (key, p) in enumerate(sorted(profiles.items())):
        shown = p.count > 0
        x, mean, sem = p.x[shown], p.mean[shown], p.sem[shown]
        ax.plot(x, mean, "o-", ms=3, color=_colour(i), label=species_label(key, names))
        ax.fill_between(x, mean - sem, mean + sem, color=_colour(i), alpha=0.25, lw=0)
        if reference and key in reference:
            ax.plot(*reference[key], "--", color=_colour(i), label=f"{species_label(key, names)} reference")
    ax.axhline(0.0, color="0.6", lw=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("mean 3-body relevance R₃ (eV)")
    ax.legend(fontsize=8, title="end–centre–end", title_fontsize=8)
    return save_figure(fig, path)


def plot_body_order_shares(shares: Shares, path) -> Path:
    """Bars of the pooled energy share and ``|R|`` share per body order (and the residual),
    error bars the standard deviation of the per-frame shares.

    Args:
        shares: :func:`body_order_shares` output.
        path: PNG to write.

    Returns:
        ``path`` as a Path.
    """
    fig = Figure(figsize=(8.0, 3.8))
    for j, (kind, title) in enumerate((("energy_share", "share of Σ R (signed)"),
                                       ("abs_share", "share of Σ |R|"))):
        ax = fig.add_subplot(1, 2, j + 1)
        parts = getattr(shares, kind)
        names = list(parts)
        pooled = [parts[k].pooled for k in names]
        spread = [np.std(parts[k].per_frame) for k in names]
        ax.bar(range(len(names)), pooled, yerr=spread, color=[_colour(i) for i in range(len(names))],
               capsize=3)
        ax.set_xticks(range(len(names)), [f"{k}-body" if k != "residual" else "residual" for k in names])
        ax.axhline(0.0, color="0.6", lw=0.8)
        ax.set_title(f"{title}, {len(shares.frames)} frames", fontsize=10)
    return save_figure(fig, path)


def plot_decay(strength: dict[tuple[int, int], Strength], path, *,
               names: dict[int, str] | None = None) -> Path:
    """Mean ``|R₂|`` per distance bin on a log axis with the fitted exponential a − r/λ.

    Args:
        strength: :func:`interaction_strength` output.
        path: PNG to write.
        names: species labels {Z: label}.

    Returns:
        ``path`` as a Path.
    """
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot()
    for i, (key, s) in enumerate(sorted(strength.items())):
        b = s.bins
        shown = (b.count > 0) & (b.mean > 0)
        label = species_label(key, names)
        ax.semilogy(b.x[shown], b.mean[shown], "o", ms=4, color=_colour(i), label=label)
        if s.decay_length_A is not None:
            r = b.x[shown]
            ax.semilogy(r, s.amplitude_eV * np.exp(-r / s.decay_length_A), "-", color=_colour(i),
                        label=f"{label} fit, λ = {s.decay_length_A:.3g} Å")
    ax.set_xlabel("distance r (Å)")
    ax.set_ylabel("mean |R₂| (eV)")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_atomwise(predicted: np.ndarray, reference: np.ndarray, path, *, xlabel: str, ylabel: str) -> Path:
    """Scatter of predicted against reference atomwise energies with y = x and the
    :func:`atomwise_comparison` statistics in the legend.

    Args:
        predicted, reference: same shape, eV.
        path: PNG to write.
        xlabel, ylabel: axis labels (reference on x, predicted on y).

    Returns:
        ``path`` as a Path.
    A constant side (e.g. the exact 3-body energies of a null test, all 0) has no
    correlation; the legend then gives n and the MAE only.

    Raises:
        ValueError: as :func:`atomwise_comparison`, except for a constant side.
    """
    x, y = np.ravel(reference), np.ravel(predicted)
    if x.shape == y.shape and len(x) >= 2 and (np.ptp(x) == 0 or np.ptp(y) == 0):
        label = f"n = {len(x)}, MAE = {np.mean(np.abs(y - x)):.3g} eV (one side constant)"
    else:
        stats = atomwise_comparison(predicted, reference)
        label = (f"n = {stats.n}, r = {stats.pearson_r:.3f}, R² = {stats.r2:.3f}\n"
                 f"MAE = {stats.mae:.3g} eV, RMSE = {stats.rmse:.3g} eV\n"
                 f"fit y = {stats.slope:.3f} x + {stats.intercept:.3g} eV")
    fig = Figure(figsize=(4.8, 4.6))
    ax = fig.add_subplot()
    ax.plot(x, y, ".", ms=3, alpha=0.6, label=label)
    lo, hi = min(x.min(), y.min()), max(x.max(), y.max())
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_method_totals(totals: dict[str, dict[str, np.ndarray]], path, *,
                       title: str = "body-order totals per frame by method") -> Path:
    """Grouped bars: the mean over frames of each group's per-frame total, one colour per method.

    Args:
        totals: {method: {group label (e.g. "2-body"): (F,) per-frame totals, eV}}; every
            method lists the groups of the first one (a missing group draws 0). Error bars are
            the standard deviation over frames.
    """
    fig = Figure(figsize=(6.8, 4.2))
    ax = fig.add_subplot()
    groups = list(next(iter(totals.values())))
    width = 0.8 / len(totals)
    for i, (name, values) in enumerate(totals.items()):
        x = np.arange(len(groups)) + (i - (len(totals) - 1) / 2) * width
        rows = [np.asarray(values.get(g, np.zeros(1))) for g in groups]
        ax.bar(x, [v.mean() for v in rows], width, yerr=[v.std() for v in rows], color=_colour(i), label=name,
               capsize=2)
    ax.set_xticks(np.arange(len(groups)), groups)
    ax.axhline(0.0, color="0.5", lw=0.8)
    ax.set_ylabel("total per frame (eV)")
    ax.legend(fontsize=8)
    ax.set_title(title)
    return save_figure(fig, path)


def plot_terms_against(pairs: dict[str, tuple[np.ndarray, np.ndarray]], path, *, xlabel: str, ylabel: str) -> Path:
    """Scatter of matched terms, one colour per method, with y = x dashed.

    Args:
        pairs: {method: (reference values (m,), the method's values (m,))}, eV.
    """
    fig = Figure(figsize=(5.2, 4.6))
    ax = fig.add_subplot()
    values = np.concatenate([np.concatenate(p) for p in pairs.values()]) if pairs else np.zeros(1)
    for i, (name, (x, y)) in enumerate(pairs.items(), start=1):
        ax.plot(x, y, ".", ms=2, alpha=0.5, color=_colour(i), label=name)
    ax.plot([values.min(), values.max()], [values.min(), values.max()], "k--", lw=0.8, label="y = x")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8, markerscale=4)
    return save_figure(fig, path)


def plot_pair_curves_by_method(curves: dict[str, dict[tuple[int, int], BinnedCurve]],
                               exact: dict[tuple[int, int], BinnedCurve] | None, path, *,
                               names: dict[int, str] | None = None) -> Path:
    """Mean 2-body term against distance for each method (one panel per species pair), with the
    exact mean of the same pairs dashed black when given."""
    keys = sorted(next(iter(curves.values())))
    fig = Figure(figsize=(5.6 * len(keys), 4.2))
    for k, key in enumerate(keys):
        ax = fig.add_subplot(1, len(keys), k + 1)
        for i, (name, by_pair) in enumerate(curves.items()):
            c = by_pair[key]
            ax.plot(c.x[c.count > 0], c.mean[c.count > 0], "o-", ms=2.5, color=_colour(i), label=name)
        if exact is not None and key in exact:
            c = exact[key]
            ax.plot(c.x[c.count > 0], c.mean[c.count > 0], "k--", lw=1.2, label="exact")
        ax.axhline(0.0, color="0.6", lw=0.8)
        ax.set_xlabel("distance (Å)")
        ax.set_ylabel("mean 2-body term (eV)")
        ax.set_title(species_label(key, names))
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_dimer_curves(curves: dict, path, *, rule: str | None = None, names: dict[int, str] | None = None) -> Path:
    """The model's 2-body term of each isolated species pair (MBE, solid) and its GNN-LRP 2-body
    relevance (dashed) against distance, one panel per pair, with the shortest distance of the
    reference data (r_ref) marked and the region below it shaded
    (:func:`jaxrel.analysis.diagnostics.dimer_curves`). The y range shows the curves from r_ref out
    and their inner minimum; a steep wall below r_ref leaves the panel."""
    keys = list(curves)
    fig = Figure(figsize=(4.2 * len(keys), 3.8))
    for k, key in enumerate(keys):
        c = curves[key]
        ax = fig.add_subplot(1, len(keys), k + 1)
        ax.axvspan(c.distance[0], c.reference_min_A, color="0.92", lw=0)
        ax.plot(c.distance, c.mbe, "-", color=_colour(0), label="MBE ε₂")
        shown = [c.mbe]
        if c.relevance is not None:
            ax.plot(c.distance, c.relevance, "--", color=_colour(1), label=f"GNN-LRP R₂ ({rule})")
            shown.append(c.relevance)
        ax.axvline(c.reference_min_A, color="0.4", lw=0.8, label=f"r_ref = {c.reference_min_A:.2f} Å")
        ax.axhline(0.0, color="0.6", lw=0.8)
        outer = c.distance >= c.reference_min_A
        low = min(float(v.min()) for v in shown)
        high = max(float(v[outer].max()) for v in shown)
        pad = 0.1 * max(high - low, 1e-3)
        ax.set_ylim(low - pad, high + 3 * pad)
        ax.set_xlabel("distance (Å)")
        ax.set_ylabel("2-body term of the isolated pair (eV)")
        ax.set_title(species_label(key, names))
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def plot_force_components(parts: dict[str, np.ndarray], path, *, title: str = "") -> Path:
    """Histograms (log counts) of the Cartesian components of several force sets, eV/Å,
    each labelled with its RMS."""
    fig = Figure(figsize=(6.0, 4.0))
    ax = fig.add_subplot()
    span = max(float(np.abs(v).max()) for v in parts.values()) or 1.0
    bins = np.linspace(-span, span, 81)
    for i, (label, values) in enumerate(parts.items()):
        values = np.asarray(values).ravel()
        ax.hist(values, bins=bins, histtype="step", color=_colour(i),
                label=f"{label} (RMS {np.sqrt(np.mean(values ** 2)):.3g} eV/Å)")
    ax.set_yscale("log")
    ax.set_xlabel("force component (eV/Å)")
    ax.set_ylabel("count")
    ax.legend(fontsize=8)
    ax.set_title(title)
    return save_figure(fig, path)


def plot_per_species(values: np.ndarray, reference: np.ndarray, species: np.ndarray, path, *,
                     xlabel: str, ylabel: str) -> Path:
    """Scatter of per-atom values against a reference, one colour per species, with each
    species' Pearson r in the legend (e.g. latent against xTB partial charges).

    Args:
        values, reference, species: (n,) per-atom arrays (species: atomic numbers).
        path: PNG to write; xlabel, ylabel: axis labels (reference on x).
    Returns:
        ``path`` as a Path.
    """
    agreement = per_species_agreement(values, reference, species)
    fig = Figure(figsize=(5.6, 4.6))
    ax = fig.add_subplot()
    elements = np.unique(species)
    palette = colormaps["tab20"] if len(elements) > 10 else None     # distinct colours beyond ten
    for i, z in enumerate(elements):
        keep = species == z
        r = f", r = {agreement[int(z)].pearson_r:.2f}" if int(z) in agreement else ""
        ax.plot(reference[keep], values[keep], ".", ms=3, alpha=0.6,
                color=palette(i % 20) if palette else _colour(i),
                label=f"{species_label((int(z),))} ({int(keep.sum())}{r})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, ncol=2, markerscale=3)
    return save_figure(fig, path)


def plot_locality(shares: dict[str, np.ndarray], path, *, fraction: float = 0.9) -> Path:
    """Histograms of the share of a frame's atoms that carry ``fraction`` of its relevance, one
    per model (e.g. per readout).

    Args:
        shares: {label: (F,) shares in (0, 1]}; path: PNG to write.
    Returns:
        ``path`` as a Path.
    """
    fig = Figure(figsize=(5.6, 4.0))
    ax = fig.add_subplot()
    for i, (label, share) in enumerate(shares.items()):
        share = np.asarray(share)
        ax.hist(share, bins=np.linspace(0, 1, 21), histtype="step", lw=1.5, color=_colour(i),
                label=f"{label} (mean {share.mean():.2f})")
    ax.set_xlabel(f"share of the atoms that carry {100 * fraction:.0f} % of Σ|R_i|")
    ax.set_ylabel("frames")
    ax.legend(fontsize=8)
    return save_figure(fig, path)
