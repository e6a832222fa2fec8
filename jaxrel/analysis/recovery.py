"""What a trained potential's attributions recover of a known ground truth.

On the noble-gas liquids of :mod:`jaxrel.data.noble_gas` the exact decomposition is
known: every pair energy (Lennard-Jones), every triplet energy (Axilrod–Teller–Muto) and
each atom's local energy. This module matches the n-body relevance terms of explained
frames (an :class:`~jaxrel.relevance.Explanation`) term by term with those exact terms and compares

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
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np

from jaxrel.analysis.numerics import (Agreement, BinnedCurve, atomwise_comparison, pair_relevance_curve,
                                      triplet_angle_profile)
from jaxrel.analysis.plots import plot_atomwise, plot_pair_curves, plot_triplet_profiles
from jaxrel.analysis.write import Written
from jaxrel.files import write_json
from jaxrel.relevance import Explanation, Table

GROUND_TRUTH_KEYS = ("species", "coords", "local_energies", "pair_frame", "pair_atoms",
                     "pair_distance", "pair_energy", "triplet_frame", "triplet_atoms",
                     "triplet_energy", "cutoff", "three_body")
"""Keys a ground-truth file (``jaxrel generate noble-gas``) must have."""


def is_ground_truth(data: Mapping) -> bool:
    """True when ``data`` (e.g. an opened ``.npz``) has every key of :data:`GROUND_TRUTH_KEYS`."""
    return all(k in data for k in GROUND_TRUTH_KEYS)


def load_ground_truth(data_path) -> dict | None:
    """The exact decomposition stored in a data file, or None when ``data_path`` is None, not an
    ``.npz`` file, or a file without ground-truth keys (:func:`is_ground_truth`)."""
    if data_path is None or not Path(data_path).is_file() or Path(data_path).suffix != ".npz":
        return None
    with np.load(data_path) as npz:
        if not is_ground_truth(npz):
            return None
        return {k: npz[k] for k in npz.files}


@dataclass(frozen=True)
class TermRecovery:
    """Relevance terms of one body order matched with the exact terms of the same atoms, eV.

    recovered, exact: (m,) per term (exact 0 for terms the truth does not list);
    recovered_total, exact_total: (F,) per frame; missed_exact: (F,) the exact energy of
    terms outside the model's graph, per frame.
    """

    recovered: np.ndarray
    exact: np.ndarray
    recovered_total: np.ndarray
    exact_total: np.ndarray
    missed_exact: np.ndarray

    def summary(self) -> dict:
        """n, mae_eV, pearson_r, r2, slope, rmse (correlations None when a side is constant),
        recovered_sum_eV, exact_sum_eV and the per-frame totals."""
        stats = {"n": int(len(self.recovered)), "mae_eV": float(np.mean(np.abs(self.recovered - self.exact))),
                 "recovered_sum_eV": float(self.recovered.sum()), "exact_sum_eV": float(self.exact.sum())}
        try:
            full = atomwise_comparison(self.recovered, self.exact)
            stats |= {"pearson_r": full.pearson_r, "r2": full.r2, "slope": full.slope, "rmse": full.rmse}
        except ValueError:
            stats |= {"pearson_r": None, "r2": None, "slope": None,
                      "rmse": float(np.sqrt(np.mean((self.recovered - self.exact) ** 2)))}
        return stats | {"recovered_total_eV": self.recovered_total.tolist(),
                        "exact_total_eV": self.exact_total.tolist(), "missed_exact_eV": self.missed_exact.tolist()}


@dataclass(frozen=True)
class Recovery:
    """What an explanation recovers of a noble-gas ground truth (:func:`compare_with_ground_truth`).

    frames (F,) frame numbers; three_body_in_truth; ground_truth_cutoff_A; pairs and
    triplets (:class:`TermRecovery`, triplets None without 3-body terms); pair_curves
    {pair: BinnedCurve} of R₂ on [shortest, cutoff]; exact_pair_potential {pair: (r Å, φ eV)};
    triplet_angle_profiles {"recovered", "exact"}: {triplet: BinnedCurve} of R₃ and of the exact
    energies of the same triplets (None without 3-body terms); atomwise (:class:`Agreement` of
    the model's E_i with the exact local energies) and atomwise_energies (predicted, exact)
    (F, N) eV, None when the explanation has no atomwise energies; pair_table: the
    explanation's 2-body table the pair terms were matched from.
    """

    frames: np.ndarray
    three_body_in_truth: bool
    ground_truth_cutoff_A: float
    pairs: TermRecovery
    triplets: TermRecovery | None
    pair_curves: dict[tuple[int, int], BinnedCurve]
    exact_pair_potential: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]
    triplet_angle_profiles: dict[str, dict] | None
    atomwise: Agreement | None
    atomwise_energies: tuple[np.ndarray, np.ndarray] | None
    pair_table: Table | None = None

    def summary(self) -> dict:
        """The JSON-ready result (``recovery.json``): every field but the per-term arrays."""
        out = {"frames": self.frames.tolist(), "three_body_in_truth": self.three_body_in_truth,
               "ground_truth_cutoff_A": self.ground_truth_cutoff_A, "pairs": self.pairs.summary(),
               "pair_curves": self.pair_curves, "exact_pair_potential": self.exact_pair_potential}
        if self.triplets is not None:
            out["triplets"] = self.triplets.summary()
            out["triplet_angle_profiles"] = self.triplet_angle_profiles
        if self.atomwise is not None:
            out["atomwise"] = self.atomwise
        return out


def match_terms(frames: np.ndarray, atoms: np.ndarray, key_frames: np.ndarray, key_atoms: np.ndarray,
           n_atoms: int) -> tuple[np.ndarray, np.ndarray]:
    """For each term (frame, sorted atoms) the index of the same term among the keys, and a found mask.

    Args:
        frames: (m,) int; atoms: (m, n) int, rows sorted; key_frames: (k,) int; key_atoms:
            (k, n) int (sorted here); n_atoms: atoms per frame.
    Returns:
        ``(index (m,) int into the keys, found (m,) bool)``; index is meaningless where not found.
    """
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


def _terms(table: Table, frames: np.ndarray, key_frames, key_atoms, key_energy, n_atoms) -> "TermRecovery":
    """Recovered vs exact energies of every term of the explained frames (eV).

    Terms of the explained table absent from the exact list have exact energy 0; exact
    terms of explained frames absent from the table (outside the model's graph) are
    counted as ``missed_exact_eV``.
    """
    idx, found = match_terms(table.frame, table.atoms, key_frames, key_atoms, n_atoms)
    exact = np.where(found, key_energy[idx] if len(key_energy) else 0.0, 0.0)
    in_frames = np.isin(key_frames, frames)
    matched = np.zeros(len(key_frames), bool)
    matched[idx[found]] = True
    missed = np.array([key_energy[in_frames & ~matched & (key_frames == f)].sum() for f in frames])
    recovered_total = np.array([table.relevance[table.frame == f].sum() for f in frames])
    exact_total = np.array([key_energy[in_frames & (key_frames == f)].sum() for f in frames])
    return TermRecovery(table.relevance, exact, recovered_total, exact_total, missed)


def compare_with_ground_truth(explanation: Explanation, truth: Mapping, *, n_bins: int = 40) -> Recovery:
    """Match an explanation term by term with the exact noble-gas decomposition.

    Args:
        explanation: an explanation of frames of the ground-truth file (its frame numbers
            index the file's frames); its atomwise energies, when present, are compared with
            the exact local energies.
        truth: the ground-truth arrays (``np.load`` of a ``jaxrel generate noble-gas``
            file), keys :data:`GROUND_TRUTH_KEYS`.
        n_bins: distance bins of the recovered pair curves.

    Returns:
        :class:`Recovery` (eV, Å).
    Raises:
        ValueError: ``truth`` lacks ground-truth keys, the explanation has no 2-body terms,
            or its atoms do not match the truth's.
    """
    from jaxrel.data.noble_gas import pair_energy

    missing = [k for k in GROUND_TRUTH_KEYS if k not in truth]
    if missing:
        raise ValueError(f"the data has no exact decomposition (missing {', '.join(missing)}): "
                         "recovery needs a file written by 'jaxrel generate noble-gas'")
    if 2 not in explanation.tables:
        raise ValueError("the explanation has no 2-body terms: explain with max_order 2 or higher")
    frames = np.asarray(explanation.frames)
    species = np.asarray(truth["species"])
    n_atoms = len(species)
    if explanation.n_atoms != n_atoms:
        raise ValueError(f"the explanation has {explanation.n_atoms} atoms per frame but the ground truth "
                         f"{n_atoms}: compare an explanation of frames of this ground-truth file")
    cutoff = float(truth["cutoff"])
    pairs = _terms(explanation.tables[2], frames, truth["pair_frame"], truth["pair_atoms"],
                   truth["pair_energy"], n_atoms)
    triplets = profiles = None
    if 3 in explanation.tables:
        table3 = explanation.tables[3]
        triplets = _terms(table3, frames, truth["triplet_frame"], truth["triplet_atoms"],
                          truth["triplet_energy"], n_atoms)
        profiles = {"recovered": triplet_angle_profile(table3),
                    "exact": triplet_angle_profile(table3.with_relevance(triplets.exact))}
    curves = pair_relevance_curve(explanation.tables[2], r_max=cutoff, n_bins=n_bins)
    r = np.linspace(float(explanation.tables[2].distances[:, 0].min()), cutoff, 200)
    with jax.enable_x64(True):
        exact_pair = {key: (r, np.asarray(pair_energy(r, key[0], key[1], cutoff))) for key in curves}
    atomwise = energies = None
    if explanation.atomwise_energy is not None:
        local = np.asarray(truth["local_energies"])[frames]
        energies = (np.asarray(explanation.atomwise_energy, np.float64), local)
        atomwise = atomwise_comparison(*energies)
    return Recovery(frames, bool(truth["three_body"]), cutoff, pairs, triplets, curves, exact_pair, profiles,
                    atomwise, energies, explanation.tables[2])


def write_recovery(recovery: Recovery, out_dir, *, label: str = "") -> Written:
    """Figures and ``recovery.json`` of a :func:`compare_with_ground_truth` result.

    Writes ``recovery_pair_curves.png`` (recovered mean R₂(r) ± s.e.m. with the exact
    pair potential dashed), ``recovery_pairs.png`` and ``recovery_triplets.png`` (term by
    term scatter), ``recovery_triplet_angles.png`` (mean R₃ and mean exact ATM energy of the
    same triplets against the angle at the centre atom), ``recovery_three_body_totals.png``
    (per frame Σ R₃ vs Σ E_ATM, when there are at least two frames), ``recovery_atomwise.png``
    (model E_i vs exact local energies) and ``recovery.json`` (:meth:`Recovery.summary`).

    Returns:
        :class:`~jaxrel.analysis.write.Written` with ``results`` {"recovery": the summary}.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = {"recovery_pair_curves": plot_pair_curves(
        recovery.pair_curves, out / "recovery_pair_curves.png", reference=recovery.exact_pair_potential,
        title=f"recovered 2-body relevance vs exact pair potential {label}".strip())}
    pairs = recovery.pairs
    figures["recovery_pairs"] = plot_atomwise(pairs.recovered, pairs.exact, out / "recovery_pairs.png",
                                              xlabel="exact pair energy φ(r_ij) (eV)",
                                              ylabel="2-body relevance R₂(i, j) (eV)")
    t = recovery.triplets
    if t is not None:
        figures["recovery_triplets"] = plot_atomwise(t.recovered, t.exact, out / "recovery_triplets.png",
                                                     xlabel="exact ATM triplet energy (eV)",
                                                     ylabel="3-body relevance R₃(i, j, k) (eV)")
        profiles = recovery.triplet_angle_profiles
        exact = {key: (p.x[p.count > 0], p.mean[p.count > 0]) for key, p in profiles["exact"].items()}
        figures["recovery_triplet_angles"] = plot_triplet_profiles(
            profiles["recovered"], out / "recovery_triplet_angles.png", reference=exact)
        if len(t.exact_total) >= 2:
            figures["recovery_three_body_totals"] = plot_atomwise(
                t.recovered_total, t.exact_total, out / "recovery_three_body_totals.png",
                xlabel="exact 3-body energy per frame (eV)", ylabel="Σ R₃ per frame (eV)")
    if recovery.atomwise_energies is not None:
        figures["recovery_atomwise"] = plot_atomwise(*recovery.atomwise_energies, out / "recovery_atomwise.png",
                                                     xlabel="exact local energy (eV)",
                                                     ylabel="model atomwise energy E_i (eV)")
    summary = recovery.summary()
    return Written({"recovery": summary}, figures, {"recovery": write_json(out / "recovery.json", summary)})
