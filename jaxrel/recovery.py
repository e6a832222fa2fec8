"""What a trained potential's attributions recover of a known ground truth.

On the noble-gas liquids of :mod:`jaxrel.data.noble_gas` the exact decomposition is
known: every pair energy (Lennard-Jones), every triplet energy (Axilrod–Teller–Muto) and
each atom's local energy. This module matches the n-body relevance terms of explained
frames (``jaxrel explain``) term by term with those exact terms and compares

* the recovered pair curve R₂(r) with the exact pair potential φ(r), per species pair;
* each pair's R₂(i, j) with its exact φ(r_ij), and each triplet's R₃(i, j, k) with its
  exact ATM energy (0 for triplets that are not a triangle inside the cutoff);
* per-frame totals Σ R₂, Σ R₃ with Σ φ and Σ E_ATM;
* the model's atomwise energies E_i with the exact local energies
  (Uhlig, Tovey, Holm 2024, arXiv:2403.00377).

These are measurements, not pass/fail gates: relevance is a decomposition of the model,
and a model that fits energies and forces may still spread them differently over body
orders (Bonneau et al. 2024, arXiv:2407.04526).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import jax
import numpy as np

from jaxrel.analysis import (Explained, _jsonable, atomwise_comparison, pair_relevance_curve,
                             plot_atomwise, plot_pair_curves, plot_triplet_profiles, triplet_angle_profile)

GROUND_TRUTH_KEYS = ("species", "coords", "local_energies", "pair_frame", "pair_atoms",
                     "pair_distance", "pair_energy", "triplet_frame", "triplet_atoms",
                     "triplet_energy", "cutoff", "three_body")
"""Keys a ground-truth file (``jaxrel generate noble-gas``) must have."""


def is_ground_truth(data: Mapping) -> bool:
    """True when ``data`` (e.g. an opened ``.npz``) has every key of :data:`GROUND_TRUTH_KEYS`."""
    return all(k in data for k in GROUND_TRUTH_KEYS)


def _match(frames: np.ndarray, atoms: np.ndarray, key_frames: np.ndarray, key_atoms: np.ndarray,
           n_atoms: int) -> tuple[np.ndarray, np.ndarray]:
    """For each row (frame, sorted atoms) the index of the same row in the keys, and a found mask."""
    def code(f, a):
        c = f.astype(np.int64)
        for col in range(a.shape[1]):
            c = c * n_atoms + a[:, col]
        return c

    keys = code(key_frames, np.sort(key_atoms, axis=1))
    order = np.argsort(keys)
    query = code(frames, atoms)
    pos = np.clip(np.searchsorted(keys[order], query), 0, max(len(keys) - 1, 0))
    found = (keys[order][pos] == query) if len(keys) else np.zeros(len(query), bool)
    return order[pos], found


def _terms(table: dict, frames: np.ndarray, key_frames, key_atoms, key_energy, n_atoms) -> dict:
    """Recovered vs exact energies of every term of the explained frames (eV).

    Terms of the explained table absent from the exact list have exact energy 0; exact
    terms of explained frames absent from the table (outside the model's graph) are
    counted as ``missed_exact_eV``.
    """
    idx, found = _match(table["frame"], table["atoms"], key_frames, key_atoms, n_atoms)
    exact = np.where(found, key_energy[idx] if len(key_energy) else 0.0, 0.0)
    in_frames = np.isin(key_frames, frames)
    matched = np.zeros(len(key_frames), bool)
    matched[idx[found]] = True
    missed = np.array([key_energy[in_frames & ~matched & (key_frames == f)].sum() for f in frames])
    recovered_total = np.array([table["relevance"][table["frame"] == f].sum() for f in frames])
    exact_total = np.array([key_energy[in_frames & (key_frames == f)].sum() for f in frames])
    return {"recovered": table["relevance"], "exact": exact, "recovered_total": recovered_total,
            "exact_total": exact_total, "missed_exact_eV": missed}


def _stats(recovered: np.ndarray, exact: np.ndarray) -> dict:
    """Agreement statistics; correlations are None when either side is constant."""
    stats = {"n": int(len(recovered)), "mae_eV": float(np.mean(np.abs(recovered - exact))),
             "recovered_sum_eV": float(recovered.sum()), "exact_sum_eV": float(exact.sum())}
    try:
        full = atomwise_comparison(recovered, exact)
        stats |= {k: full[k] for k in ("pearson_r", "r2", "slope", "rmse")}
    except ValueError:
        stats |= {"pearson_r": None, "r2": None, "slope": None,
                  "rmse": float(np.sqrt(np.mean((recovered - exact) ** 2)))}
    return stats


def model_atomwise_energies(potential, params, explained: Explained) -> np.ndarray:
    """The model's atomwise energies E_i of the explained frames, (n_frames, n_atoms) eV.

    Raises:
        ValueError: the explained run stores no frame geometry (re-run ``jaxrel explain``).
    """
    from jaxrel.graph import build_graphs

    if explained.positions is None or explained.species is None:
        raise ValueError("the explained run stores no positions: re-run 'jaxrel explain' to write them")
    graph = build_graphs(explained.positions, explained.species, potential.config.cutoff,
                         cell=explained.cell).astype(potential.config.dtype)
    return np.asarray(potential.atomwise_energy(params, graph), np.float64)[:, :len(explained.species)]


def compare_with_ground_truth(explained: Explained, truth: Mapping,
                              atomwise_energy: np.ndarray | None = None, *, n_bins: int = 40) -> dict:
    """Match an explained run term by term with the exact noble-gas decomposition.

    Args:
        explained: :func:`jaxrel.analysis.load_explained` of a ``jaxrel explain`` run on
            the ground-truth file (its ``frame`` numbers index the file's frames).
        truth: the ground-truth arrays (``np.load`` of a ``jaxrel generate noble-gas``
            file), keys :data:`GROUND_TRUTH_KEYS`.
        atomwise_energy: optional (n_frames, n_atoms) eV, the model's atomwise energies of
            the explained frames in ``explained.frame_index`` order.
        n_bins: distance bins of the recovered pair curves.

    Returns:
        A dict (all eV, Å): ``pairs`` and ``triplets`` with term statistics
        (``n, mae_eV, pearson_r, r2, slope, rmse, recovered_sum_eV, exact_sum_eV``) and
        per-frame totals ``recovered_total_eV``, ``exact_total_eV``, ``missed_exact_eV``;
        ``pair_curves`` (:func:`jaxrel.analysis.pair_relevance_curve`) and
        ``exact_pair_potential`` {pair: (r, φ)}; ``triplet_angle_profiles``
        {"recovered", "exact"} (:func:`jaxrel.analysis.triplet_angle_profile` of R₃ and of the
        exact energies of the same triplets) when there are 3-body terms; ``atomwise`` statistics when
        ``atomwise_energy`` is given; ``three_body_in_truth``; and the raw matched
        arrays under ``_arrays`` for plotting (dropped by :func:`write_recovery`'s JSON).

    Raises:
        ValueError: ``truth`` lacks ground-truth keys, the explained run has no stored
            frames or no 2-body terms, or ``atomwise_energy`` has the wrong shape.
    """
    from jaxrel.data.noble_gas import pair_energy

    missing = [k for k in GROUND_TRUTH_KEYS if k not in truth]
    if missing:
        raise ValueError(f"the data has no exact decomposition (missing {', '.join(missing)}): "
                         "recovery needs a file written by 'jaxrel generate noble-gas'")
    if explained.frame_index is None or 2 not in explained.tables:
        raise ValueError("the explained run stores no frames or no 2-body terms: re-run "
                         "'jaxrel explain' with --order 2 or higher")
    frames = np.asarray(explained.frame_index)
    species = np.asarray(truth["species"])
    n_atoms = len(species)
    cutoff = float(truth["cutoff"])
    pairs = _terms(explained.tables[2], frames, truth["pair_frame"], truth["pair_atoms"],
                   truth["pair_energy"], n_atoms)
    result = {"frames": frames.tolist(), "three_body_in_truth": bool(truth["three_body"]),
              "ground_truth_cutoff_A": cutoff}
    arrays = {"pairs": pairs}
    result["pairs"] = _stats(pairs["recovered"], pairs["exact"]) | {
        k + "_eV": pairs[k].tolist() for k in ("recovered_total", "exact_total")} | {
        "missed_exact_eV": pairs["missed_exact_eV"].tolist()}
    if 3 in explained.tables:
        triplets = _terms(explained.tables[3], frames, truth["triplet_frame"], truth["triplet_atoms"],
                          truth["triplet_energy"], n_atoms)
        arrays["triplets"] = triplets
        table3 = explained.tables[3]
        result["triplet_angle_profiles"] = {
            "recovered": triplet_angle_profile(table3),
            "exact": triplet_angle_profile({**table3, "relevance": triplets["exact"]})}
        result["triplets"] = _stats(triplets["recovered"], triplets["exact"]) | {
            k + "_eV": triplets[k].tolist() for k in ("recovered_total", "exact_total")} | {
            "missed_exact_eV": triplets["missed_exact_eV"].tolist()}
    curves = pair_relevance_curve(explained.tables[2], r_max=cutoff, n_bins=n_bins)
    r = np.linspace(float(explained.tables[2]["distances"][:, 0].min()), cutoff, 200)
    result["pair_curves"] = curves
    with jax.enable_x64(True):
        result["exact_pair_potential"] = {key: (r, np.asarray(pair_energy(r, key[0], key[1], cutoff)))
                                          for key in curves}
    if atomwise_energy is not None:
        local = np.asarray(truth["local_energies"])[frames]
        atomwise_energy = np.asarray(atomwise_energy, np.float64)
        if atomwise_energy.shape != local.shape:
            raise ValueError(f"atomwise_energy has shape {atomwise_energy.shape}, expected "
                             f"{local.shape} (explained frames × atoms)")
        result["atomwise"] = atomwise_comparison(atomwise_energy, local)
        arrays["atomwise"] = {"predicted": atomwise_energy, "exact": local}
    result["_arrays"] = arrays
    return result


def write_recovery(result: dict, out_dir, *, label: str = "") -> dict:
    """Figures and ``recovery.json`` for a :func:`compare_with_ground_truth` result.

    Writes ``recovery_pair_curves.png`` (recovered mean R₂(r) ± s.e.m. with the exact
    pair potential dashed), ``recovery_pairs.png`` and ``recovery_triplets.png`` (term by
    term scatter), ``recovery_triplet_angles.png`` (mean R₃ and mean exact ATM energy of the
    same triplets against the angle at the centre atom), ``recovery_three_body_totals.png`` (per frame Σ R₃ vs Σ E_ATM, when
    there are at least two frames), ``recovery_atomwise.png`` (model E_i vs exact local
    energies) and ``recovery.json``.

    Returns:
        {"figures": {name: path relative to out_dir}, "json": "recovery.json"}.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arrays = result["_arrays"]
    figures = {"recovery_pair_curves": plot_pair_curves(
        result["pair_curves"], out / "recovery_pair_curves.png", reference=result["exact_pair_potential"],
        title=f"recovered 2-body relevance vs exact pair potential {label}".strip())}
    pairs = arrays["pairs"]
    figures["recovery_pairs"] = plot_atomwise(pairs["recovered"], pairs["exact"], out / "recovery_pairs.png",
                                              xlabel="exact pair energy φ(r_ij) (eV)",
                                              ylabel="2-body relevance R₂(i, j) (eV)")
    if "triplets" in arrays:
        t = arrays["triplets"]
        figures["recovery_triplets"] = plot_atomwise(t["recovered"], t["exact"], out / "recovery_triplets.png",
                                                     xlabel="exact ATM triplet energy (eV)",
                                                     ylabel="3-body relevance R₃(i, j, k) (eV)")
        profiles = result["triplet_angle_profiles"]
        exact = {key: (p["angle_center"][p["count"] > 0], p["mean"][p["count"] > 0])
                 for key, p in profiles["exact"].items()}
        figures["recovery_triplet_angles"] = plot_triplet_profiles(
            profiles["recovered"], out / "recovery_triplet_angles.png", reference=exact)
        if len(t["exact_total"]) >= 2:
            figures["recovery_three_body_totals"] = plot_atomwise(
                t["recovered_total"], t["exact_total"], out / "recovery_three_body_totals.png",
                xlabel="exact 3-body energy per frame (eV)", ylabel="Σ R₃ per frame (eV)")
    if "atomwise" in arrays:
        a = arrays["atomwise"]
        figures["recovery_atomwise"] = plot_atomwise(a["predicted"], a["exact"], out / "recovery_atomwise.png",
                                                     xlabel="exact local energy (eV)",
                                                     ylabel="model atomwise energy E_i (eV)")
    public = {k: v for k, v in result.items() if k != "_arrays"}
    (out / "recovery.json").write_text(_json_dumps(public))
    return {"figures": {k: Path(v).name for k, v in figures.items()}, "json": "recovery.json"}


def _json_dumps(value) -> str:
    import json

    return json.dumps(_jsonable(value), indent=2, allow_nan=False)
