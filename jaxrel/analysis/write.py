"""Run the analyses of an explanation and write figures, CSV tables and ``analysis.json``.

Writers return their results in memory (:class:`Written`), so a caller (the report, the
quickstart) never reads back a file it wrote.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import NamedTuple

import numpy as np

from jaxrel.analysis.numerics import (BinnedCurve, atomwise_comparison, atomwise_relevance, body_order_shares,
                                      interaction_strength, pair_relevance_curve, rdf_label, species_label,
                                      triplet_angle_profile, triplet_distance_profile)
from jaxrel.analysis.plots import (plot_atomwise, plot_body_order_shares, plot_decay, plot_pair_curves,
                                   plot_triplet_profiles)
from jaxrel.files import key_label, write_json
from jaxrel.geometry import cell_heights, partial_rdf
from jaxrel.relevance import Explanation

REFERENCES = {"pair_curves, rdf": "Bonneau et al. 2024, arXiv:2407.04526",
              "interaction_strength, decay": "Esders et al. 2025, arXiv:2410.13833",
              "atomwise": "Schütt et al. 2018, arXiv:1712.06113; Uhlig, Tovey, Holm 2024, arXiv:2403.00377"}


class Written(NamedTuple):
    """What a writer produced: ``results`` in memory (typed analysis results by name),
    ``figures`` {name: PNG path} and ``files`` {name: CSV/JSON path}."""

    results: dict
    figures: dict[str, Path]
    files: dict[str, Path]


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _binned_rows(results: dict[tuple, BinnedCurve], names) -> list[list]:
    return [[key_label(key), species_label(key, names), float(x), float(m), float(s), int(c)]
            for key, r in sorted(results.items()) for x, m, s, c in zip(*r)]


def write_analysis(explanation: Explanation, out_dir, *, names: dict[int, str] | None = None,
                   local_energies: np.ndarray | None = None, n_bins: int = 40) -> Written:
    """Run every analysis on an explanation and write figures, CSV tables and JSON.

    Writes (each only when its inputs exist: pair analyses need 2-body terms, triplet
    profiles 3-body terms, the atomwise plot ``local_energies``): ``pair_curves.png`` (with
    the RDF on a twin axis; for a model with a prior also ``pair_curves_network.png`` and
    ``.csv``, the 2-body terms without the prior), ``triplet_angles.png``, ``triplet_distances.png``,
    ``body_order_shares.png``, ``decay.png``, ``atomwise.png``; ``pair_curves.csv``,
    ``rdf.csv``, ``triplet_angles.csv``, ``triplet_distances.csv``,
    ``interaction_strength.csv``; and ``analysis.json`` with every result (no NaN or inf:
    undefined values are null, empty bins have count 0).

    Args:
        explanation: the explained frames.
        out_dir: folder to write into (created).
        names: species labels {Z: label}, e.g. {1: "bead 1"} for coarse-grained data.
        local_energies: optional (n_frames, n_atoms) eV reference local energies of the
            explained frames, compared with :func:`atomwise_relevance` (which leaves out
            species shifts: subtract them from the reference first).
        n_bins: distance bins of the pair curves, RDF and triplet distance profiles.

    Returns:
        :class:`Written`; ``results`` holds ``body_order_shares`` (:class:`Shares`),
        ``pair_curves``, ``triplet_angles``, ``triplet_distances`` ({key: BinnedCurve}),
        ``rdf`` {"kind", "curves": {pair: (r, g)}}, ``interaction_strength`` ({pair: Strength})
        and ``atomwise`` (:class:`Agreement`) where computed.
    Raises:
        ValueError: ``local_energies`` of the wrong shape, or as the analyses above.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables = explanation.tables
    figures, files = {}, {}
    result: dict = {"units": {"distance": "Å", "energy": "eV", "angle": "degree"}, "references": REFERENCES}
    result["body_order_shares"] = body_order_shares(explanation)
    figures["body_order_shares"] = plot_body_order_shares(result["body_order_shares"], out / "body_order_shares.png")

    if 2 in tables and len(tables[2]):
        curves = pair_relevance_curve(tables[2], n_bins=n_bins)
        result["pair_curves"] = curves
        files["pair_curves"] = out / "pair_curves.csv"
        _write_csv(files["pair_curves"], ["pair", "label", "r_center_A", "mean_eV", "sem_eV", "count"],
                   _binned_rows(curves, names))
        r_max = float(tables[2].distances.max())
        if explanation.cell is not None:
            r_max = min(r_max, 0.5 * min(cell_heights(c).min() for c in explanation.cell))
        rdf = {key: partial_rdf(explanation.positions, explanation.species, explanation.cell, key,
                                r_max=r_max, n_bins=n_bins) for key in curves}
        label = rdf_label(explanation.cell)
        result["rdf"] = {"kind": label, "curves": {key: {"r_center": r, "g": g} for key, (r, g) in rdf.items()}}
        files["rdf"] = out / "rdf.csv"
        _write_csv(files["rdf"], ["pair", "label", "r_center_A", "g"],
                   [[key_label(key), species_label(key, names), float(x), float(y)]
                    for key, (r, g) in sorted(rdf.items()) for x, y in zip(r, g)])
        figures["pair_curves"] = plot_pair_curves(curves, out / "pair_curves.png", rdf=rdf, names=names,
                                                  rdf_label=label, title="2-body relevance against distance")
        if tables[2].prior is not None:      # a model with a prior: the network's part alone as well
            network = pair_relevance_curve(tables[2].with_relevance(tables[2].relevance - tables[2].prior),
                                           n_bins=n_bins)
            result["pair_curves_network"] = network
            files["pair_curves_network"] = out / "pair_curves_network.csv"
            _write_csv(files["pair_curves_network"], ["pair", "label", "r_center_A", "mean_eV", "sem_eV", "count"],
                       _binned_rows(network, names))
            figures["pair_curves_network"] = plot_pair_curves(
                network, out / "pair_curves_network.png", rdf=rdf, names=names, rdf_label=label,
                title="2-body relevance of the network alone (the fixed prior removed)")
        strength = interaction_strength(tables[2])
        result["interaction_strength"] = strength
        files["interaction_strength"] = out / "interaction_strength.csv"
        _write_csv(files["interaction_strength"],
                   ["pair", "label", "count", "mean_abs_eV", "decay_length_A", "amplitude_eV", "n_fit_bins"],
                   [[key_label(k), species_label(k, names), s.count, s.mean_abs_eV,
                     "" if s.decay_length_A is None else s.decay_length_A,
                     "" if s.amplitude_eV is None else s.amplitude_eV, s.n_fit_bins]
                    for k, s in sorted(strength.items())])
        figures["decay"] = plot_decay(strength, out / "decay.png", names=names)

    if 3 in tables and len(tables[3]):
        for name, profile, x_name, xlabel in (
                ("triplet_angles", triplet_angle_profile(tables[3]), "angle_center_deg",
                 "angle at the centre atom (deg)"),
                ("triplet_distances", triplet_distance_profile(tables[3], n_bins=n_bins), "r_center_A",
                 "shortest side of the triplet (Å)")):
            result[name] = profile
            files[name] = out / f"{name}.csv"
            _write_csv(files[name], ["triplet", "label", x_name, "mean_eV", "sem_eV", "count"],
                       _binned_rows(profile, names))
            figures[name] = plot_triplet_profiles(profile, out / f"{name}.png", xlabel=xlabel, names=names)

    if local_energies is not None:
        frames = explanation.frames
        local_energies = np.asarray(local_energies, np.float64)
        if local_energies.ndim != 2 or len(local_energies) != len(frames):
            raise ValueError(f"local_energies has shape {local_energies.shape}, expected ({len(frames)}, n_atoms): "
                             "one row per explained frame")
        predicted = np.stack([atomwise_relevance(tables, local_energies.shape[1], f) for f in frames])
        result["atomwise"] = atomwise_comparison(predicted, local_energies)
        figures["atomwise"] = plot_atomwise(predicted, local_energies, out / "atomwise.png",
                                            xlabel="reference local energy (eV)",
                                            ylabel="atomwise relevance energy (eV)")

    files["analysis"] = write_json(out / "analysis.json", result)
    return Written(result, figures, files)
