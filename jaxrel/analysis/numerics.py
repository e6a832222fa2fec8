"""What the network learned, read off the n-body relevance tables of an explanation.

Pure numpy functions over the n-body :class:`~jaxrel.relevance.Table`\\ s of an
:class:`~jaxrel.relevance.Explanation`, returning small typed results (:class:`BinnedCurve`,
:class:`Strength`, :class:`Shares`, :class:`Agreement`). No plotting here: figures live in
:mod:`jaxrel.analysis.plots`, files in :mod:`jaxrel.analysis.write`.

* Pair relevance against distance, per species pair, with the radial distribution
  function of the same frames on a twin axis (Bonneau et al., "Peering inside the black
  box: learning the relevance of many-body functions in neural network potentials",
  2024, arXiv:2407.04526; Nat. Commun. 2025).
* 3-body relevance against the angle at the centre atom and against the shortest side.
* The share of the energy (signed) and of Σ|R| carried by each body order.
* Interaction strength per species pair and its decay length (Esders et al., "Analyzing
  atomic interactions in molecules as learned by neural networks", J. Chem. Theory
  Comput. 2025, arXiv:2410.13833).
* Atomwise energies from relevance compared with a reference local energy (Schütt et al.,
  "SchNet – a deep learning architecture for molecules and materials", J. Chem. Phys.
  2018, arXiv:1712.06113; Uhlig, Tovey, Holm, "Emergence of accurate atomic energies from
  machine learned noble gas potentials", 2024, arXiv:2403.00377).

Units: distances Å, energies eV, angles degrees. Arrays are float64 unless said otherwise.
A species key is a tuple of atomic numbers (or coarse-grained bead ids); labels use the
element symbol for 1 ≤ Z ≤ 118 unless a ``names`` mapping {Z: label} is given.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from ase.data import chemical_symbols

from jaxrel.relevance import Explanation, Table


class BinnedCurve(NamedTuple):
    """A binned mean of values against a coordinate.

    Fields::

        x      (b,) float64 | bin centres (Å or degrees; for decay fits the mean coordinate of each bin)
        mean   (b,) float64 | mean value per bin, eV (0 for empty bins)
        sem    (b,) float64 | standard error of the mean, eV (0 for bins with fewer than two values)
        count  (b,) int     | values per bin (mask empty bins with count > 0)
    """

    x: np.ndarray
    mean: np.ndarray
    sem: np.ndarray
    count: np.ndarray


class Strength(NamedTuple):
    """Interaction strength of one species pair (:func:`interaction_strength`).

    mean_abs_eV: mean ``|R₂|`` over all terms; count: terms; decay_length_A and amplitude_eV:
    the fit mean ``|R₂|`` ≈ amplitude · exp(−r/λ) (None when fewer than two bins enter the fit
    or mean ``|R₂|`` does not decrease); n_fit_bins: bins in the fit; bins: mean ``|R₂|`` per distance
    bin (x the mean distance of the bin's terms, Å).
    """

    mean_abs_eV: float
    count: int
    decay_length_A: float | None
    amplitude_eV: float | None
    n_fit_bins: int
    bins: BinnedCurve


class Share(NamedTuple):
    """One body order's share: pooled over frames, mean of per-frame shares, per frame."""

    pooled: float
    mean: float
    per_frame: np.ndarray


class Shares(NamedTuple):
    """Body-order shares (:func:`body_order_shares`).

    orders: body orders listed; frames: frame numbers; energy_share and abs_share:
    {"1": Share, "2": Share, …, "residual": Share}.
    """

    orders: list[int]
    frames: list[int]
    energy_share: dict[str, Share]
    abs_share: dict[str, Share]


class Agreement(NamedTuple):
    """Agreement of predicted with reference values (:func:`atomwise_comparison`), eV."""

    pearson_r: float
    r2: float
    mae: float
    rmse: float
    slope: float
    intercept: float
    n: int


def _bin_edges(x: np.ndarray, lo: float, hi: float, n_bins: int) -> np.ndarray:
    """n_bins + 1 equal-width edges on [lo, hi] (widened by ±0.5 when lo == hi)."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    return np.histogram_bin_edges(x, bins=n_bins, range=(lo, hi))


def _grouped_bins(keys: np.ndarray, x: np.ndarray, values: np.ndarray, edges: np.ndarray) -> dict:
    """Mean, standard error of the mean and count of ``values`` per (key row, bin of x).

    Args:
        keys: (m, k) non-negative int group keys; x: (m,) binned coordinate; values: (m,); edges: (b + 1,).
            Rows with x outside [edges[0], edges[-1]] are left out (the last edge is inclusive).

    Returns:
        {key tuple: {"center" (b,), "x_mean" (b,) mean x of the rows in each bin, "mean" (b,),
        "sem" (b,) = std(ddof=1)/√count, "count" (b,) int}} for every key with a row inside.
        Empty bins have count 0 and mean, sem and x_mean 0; single-row bins have sem 0.
    """
    n_bins = len(edges) - 1
    inside = (x >= edges[0]) & (x <= edges[-1])
    keys, x, values = keys[inside], x[inside], values[inside]
    dims = keys.max(axis=0) + 1 if len(keys) else np.ones(keys.shape[1], int)
    codes, group = np.unique(np.ravel_multi_index(keys.T, dims), return_inverse=True)
    groups = np.stack(np.unravel_index(codes, dims), axis=1)
    cell = group * n_bins + np.clip(np.searchsorted(edges, x, side="right") - 1, 0, n_bins - 1)
    size = len(groups) * n_bins
    count = np.bincount(cell, minlength=size)
    occupied = count > 0
    mean = np.divide(np.bincount(cell, values, size), count, out=np.zeros(size), where=occupied)
    x_mean = np.divide(np.bincount(cell, x, size), count, out=np.zeros(size), where=occupied)
    squares = np.bincount(cell, (values - mean[cell]) ** 2, size)
    sem = np.sqrt(np.divide(squares, count * (count - 1.0), out=np.zeros(size), where=count > 1))
    center = 0.5 * (edges[:-1] + edges[1:])
    return {tuple(int(z) for z in key): {"center": center, "x_mean": x_mean[g * n_bins:(g + 1) * n_bins],
                                         "mean": mean[g * n_bins:(g + 1) * n_bins],
                                         "sem": sem[g * n_bins:(g + 1) * n_bins],
                                         "count": count[g * n_bins:(g + 1) * n_bins]}
            for g, key in enumerate(groups)}


def _require_terms(table: Table | None, n: int) -> None:
    if table is None or len(table) == 0:
        raise ValueError(f"the {n}-body table is empty: explain the frames with --order {n} or higher")


def pair_relevance_curve(table2: Table, *, r_max: float | None = None,
                         n_bins: int = 40) -> dict[tuple[int, int], BinnedCurve]:
    """Mean 2-body relevance against distance, per species pair.

    Bins are shared by all pairs: ``n_bins`` equal widths from the shortest distance in the
    table to ``r_max``. Pair relevance as a function of distance is the decay curve of
    Esders et al. 2025 (arXiv:2410.13833) and the 2-body profile of Bonneau et al. 2024
    (arXiv:2407.04526).

    Args:
        table2: the 2-body table (``Explanation.tables[2]``).
        r_max: upper end of the bins, Å (default: the longest distance in the table).
        n_bins: number of bins.

    Returns:
        {(Z_a, Z_b) sorted: :class:`BinnedCurve` with x the bin centres (n_bins,) Å}. Empty
        bins have count 0 and mean and sem 0 (mask them with count > 0); bins with one term
        have sem 0.
    Raises:
        ValueError: an empty table, or no term at or below ``r_max``.
    """
    _require_terms(table2, 2)
    r = table2.distances[:, 0]
    lo = float(r.min())
    hi = float(r.max()) if r_max is None else float(r_max)
    if hi < lo:
        raise ValueError(f"no 2-body term lies within r_max = {hi} Å (shortest distance {lo:.3f} Å): raise r_max")
    bins = _grouped_bins(np.sort(table2.species, axis=1), r, table2.relevance,
                         _bin_edges(r, lo, hi, n_bins))
    return {key: BinnedCurve(b["center"], b["mean"], b["sem"], b["count"]) for key, b in bins.items()}


def rdf_label(cell: np.ndarray | None) -> str:
    """Axis label of :func:`jaxrel.geometry.partial_rdf`'s result: g(r) (periodic) or p(r) (free space)."""
    return "g(r)" if cell is not None else "pair-distance density p(r) (1/Å), free space"


def _triplet_centres(table3: Table) -> tuple[np.ndarray, np.ndarray]:
    """Centre atom of each triplet: the vertex opposite the longest side.

    Returns:
        ``(keys (m, 3) int (Z_end1, Z_centre, Z_end2) with the ends sorted, centre (m,) int in
        0..2, the position of the centre within atoms[row])``. Ties between equal longest
        sides go to the first side in the order (0,1), (0,2), (1,2).
    """
    longest = np.argmax(table3.distances, axis=1)
    centre = np.array([2, 1, 0])[longest]
    ends = np.array([[0, 1], [0, 2], [1, 2]])[longest]
    rows = np.arange(len(centre))
    z_ends = np.sort(table3.species[rows[:, None], ends], axis=1)
    keys = np.stack([z_ends[:, 0], table3.species[rows, centre], z_ends[:, 1]], axis=1)
    return keys, centre


def triplet_angle_profile(table3: Table, *, n_bins: int = 36) -> dict[tuple[int, int, int], BinnedCurve]:
    """Mean 3-body relevance against the angle at the centre atom, per species triplet.

    The centre is the atom joined to both others by the two shortest sides (the vertex
    opposite the longest side), as in the angular 3-body analyses of Bonneau et al. 2024
    (arXiv:2407.04526) and Esders et al. 2025 (arXiv:2410.13833).

    Args:
        table3: the 3-body table (``Explanation.tables[3]``).
        n_bins: equal-width bins on [0°, 180°].

    Returns:
        {(Z_end1, Z_centre, Z_end2), ends sorted: :class:`BinnedCurve` with x the bin centres
        (n_bins,) in degrees}; empty bins have count 0.
    Raises:
        ValueError: an empty table.
    """
    _require_terms(table3, 3)
    keys, centre = _triplet_centres(table3)
    angle = table3.angles[np.arange(len(centre)), centre]
    bins = _grouped_bins(keys, angle, table3.relevance, _bin_edges(angle, 0.0, 180.0, n_bins))
    return {key: BinnedCurve(b["center"], b["mean"], b["sem"], b["count"]) for key, b in bins.items()}


def triplet_distance_profile(table3: Table, *, r_max: float | None = None,
                             n_bins: int = 40) -> dict[tuple[int, int, int], BinnedCurve]:
    """Mean 3-body relevance against the shortest side of the triplet, per species triplet.

    Keys as in :func:`triplet_angle_profile`; bins from the shortest side in the table to
    ``r_max`` (default: the longest shortest side).

    Returns:
        {(Z_end1, Z_centre, Z_end2): :class:`BinnedCurve` with x the bin centres (n_bins,) Å}.
    Raises:
        ValueError: an empty table, or no triplet's shortest side at or below ``r_max``.
    """
    _require_terms(table3, 3)
    keys, _ = _triplet_centres(table3)
    r = table3.distances.min(axis=1)
    lo = float(r.min())
    hi = float(r.max()) if r_max is None else float(r_max)
    if hi < lo:
        raise ValueError(f"no triplet's shortest side lies within r_max = {hi} Å (shortest {lo:.3f} Å): raise r_max")
    bins = _grouped_bins(keys, r, table3.relevance, _bin_edges(r, lo, hi, n_bins))
    return {key: BinnedCurve(b["center"], b["mean"], b["sem"], b["count"]) for key, b in bins.items()}


def body_order_shares(explanation: Explanation) -> Shares:
    """Share of the relevance carried by each body order, per frame and over all frames.

    For frame f with n-body totals R_n(f) = Σ of its n-body terms and the higher-order
    residual ρ(f) (the terms above the listed orders):

    * energy share (signed): R_n(f) / (Σ_m R_m(f) + ρ(f)), i.e. of Σ of all walk relevances;
      ρ(f) gets the remaining share, so the shares and the residual share sum to 1.
    * ``|R|`` share: ``Σ_{n-body terms}|R| / (Σ_{all listed terms}|R| + |ρ(f)|)``, with
      ``|ρ(f)|`` the residual's share.

    Signed shares are ill-conditioned when a frame's Σ R is near zero (a model whose
    species shifts absorb the mean energy): ``pooled`` divides the sums over all frames
    and is the stable summary; ``mean`` averages the per-frame shares. A zero denominator
    gives share 0. Body-order shares are the analysis of Esders et al. 2025
    (arXiv:2410.13833) and Bonneau et al. 2024 (arXiv:2407.04526).

    Args:
        explanation: the explained frames.

    Returns:
        :class:`Shares`; the keys of ``energy_share`` and ``abs_share`` are "1", "2", …,
        "residual".
    Raises:
        ValueError: an explanation without frames.
    """
    frames = explanation.frames
    if len(frames) == 0:
        raise ValueError("the explanation has no frames: explain a non-empty selection of frames")
    orders = sorted(explanation.tables)
    n_frames = len(frames)
    signed = {str(n): explanation.tables[n].frame_sums(frames) for n in orders}
    absolute = {str(n): explanation.tables[n].frame_sums(frames, absolute=True) for n in orders}
    residual = np.asarray(explanation.higher_order_residual, np.float64)
    signed["residual"], absolute["residual"] = residual, np.abs(residual)

    def shares(parts: dict) -> dict[str, Share]:
        total = sum(parts.values())
        pooled_total = total.sum()
        out = {}
        for name, part in parts.items():
            per_frame = np.divide(part, total, out=np.zeros(n_frames), where=total != 0)
            out[name] = Share(float(part.sum() / pooled_total) if pooled_total != 0 else 0.0,
                              float(per_frame.mean()), per_frame)
        return out

    return Shares(orders, [int(f) for f in frames], shares(signed), shares(absolute))


def interaction_strength(table2: Table, *, r_min: float | None = None,
                         n_bins: int = 20) -> dict[tuple[int, int], Strength]:
    """Interaction strength per species pair and its exponential decay length.

    Strength is the mean ``|R_2|`` over all pair terms of a species pair. The decay length λ
    comes from a least-squares fit of log(mean ``|R_2|`` in a distance bin) = a − r/λ over the
    bins at r ≥ ``r_min``, with r the mean distance of the terms in each bin (Esders et
    al., "Analyzing atomic interactions in molecules as learned by neural networks",
    J. Chem. Theory Comput. 2025, arXiv:2410.13833). Bins are shared by all pairs:
    ``n_bins`` equal widths between the shortest and longest distance in the table.

    Args:
        table2: the 2-body table.
        r_min: Å, leave out bins below (e.g. the short-range repulsive wall); default all.
        n_bins: number of distance bins.

    Returns:
        {(Z_a, Z_b): :class:`Strength`} (amplitude = exp(a)).
    Raises:
        ValueError: an empty table.
    """
    _require_terms(table2, 2)
    r = table2.distances[:, 0]
    keys = np.sort(table2.species, axis=1)
    magnitude = np.abs(table2.relevance)
    bins = _grouped_bins(keys, r, magnitude, _bin_edges(r, float(r.min()), float(r.max()), n_bins))
    out = {}
    for key, b in bins.items():
        fit = (b["count"] > 0) & (b["mean"] > 0)
        if r_min is not None:
            fit &= b["x_mean"] >= r_min
        decay, amplitude = None, None
        if fit.sum() >= 2:
            slope, intercept = np.polyfit(b["x_mean"][fit], np.log(b["mean"][fit]), 1)
            if slope < 0:
                decay, amplitude = float(-1.0 / slope), float(np.exp(intercept))
        count = int(b["count"].sum())
        out[key] = Strength(float(np.dot(b["count"], b["mean"]) / count), count, decay, amplitude,
                            int(fit.sum()), BinnedCurve(b["x_mean"], b["mean"], b["sem"], b["count"]))
    return out


def atomwise_comparison(predicted: np.ndarray, reference: np.ndarray) -> Agreement:
    """Agreement of predicted atomwise energies with a reference local energy.

    Atomwise energies as the model's local decomposition follow Schütt et al. 2018
    (arXiv:1712.06113); comparing them with physically defined local energies follows
    Uhlig, Tovey, Holm 2024 (arXiv:2403.00377).

    Args:
        predicted, reference: same shape (any, flattened), eV.

    Returns:
        :class:`Agreement`: Pearson r; r2, the coefficient of determination
        1 − Σ(p − ref)²/Σ(ref − mean ref)² (predicted taken as a prediction of reference, so it
        can be negative); mae and rmse, eV; slope and intercept (eV) of the least-squares line
        predicted = slope · reference + intercept; n.
    Raises:
        ValueError: shapes differ, fewer than two values, non-finite values, or a constant
            reference or prediction (correlation undefined).
    """
    p, q = np.asarray(predicted, np.float64), np.asarray(reference, np.float64)
    if p.shape != q.shape:
        raise ValueError(f"predicted has shape {p.shape} but reference {q.shape}: pass one value per atom in both")
    p, q = p.ravel(), q.ravel()
    if len(p) < 2 or not (np.isfinite(p).all() and np.isfinite(q).all()):
        raise ValueError(f"atomwise comparison needs at least two finite values per side, got {len(p)} "
                         "(some may be NaN or inf): check the inputs")
    dq, dp = q - q.mean(), p - p.mean()
    sq, sp = np.sum(dq * dq), np.sum(dp * dp)
    if sq == 0 or sp == 0:
        raise ValueError(f"the {'reference' if sq == 0 else 'predicted'} energies are all equal, so their "
                         "correlation is undefined: compare frames or atoms whose energies vary")
    error = p - q
    slope = float(np.sum(dq * dp) / sq)
    return Agreement(pearson_r=float(np.sum(dq * dp) / np.sqrt(sq * sp)),
                     r2=float(1.0 - np.sum(error ** 2) / sq), mae=float(np.mean(np.abs(error))),
                     rmse=float(np.sqrt(np.mean(error ** 2))), slope=slope,
                     intercept=float(p.mean() - slope * q.mean()), n=int(len(p)))


def atomwise_relevance(tables: dict[int, Table], n_atoms: int, frame: int) -> np.ndarray:
    """Per-atom energy of one frame from its n-body terms, each split equally among its atoms.

    E_i = R_1(i) + ½ Σ_j R_2(i, j) + ⅓ Σ_{j<k} R_3(i, j, k) + …, so Σ_i E_i equals the sum of
    all listed terms of the frame (species shifts, biases and terms above the listed
    orders are not included). Compare with reference local energies through
    :func:`atomwise_comparison` (Uhlig, Tovey, Holm 2024, arXiv:2403.00377).

    Args:
        tables: {n: Table} (``Explanation.tables``).
        n_atoms: atoms in the frame.
        frame: the frame number (as in the tables' ``frame`` column).

    Returns:
        (n_atoms,) float64, eV.
    Raises:
        ValueError: the frame is in no table, or an atom index ≥ n_atoms.
    """
    energy = np.zeros(n_atoms)
    found = False
    for n, table in tables.items():
        rows = table.frame == frame
        atoms = table.atoms[rows]
        if atoms.size and atoms.max() >= n_atoms:
            raise ValueError(f"frame {frame} has atom index {int(atoms.max())} but n_atoms = {n_atoms}: "
                             "pass the frame's number of atoms")
        found |= bool(rows.any())
        energy += np.bincount(atoms.ravel(), np.repeat(table.relevance[rows] / n, n), n_atoms)
    if not found:
        listed = sorted({int(f) for t in tables.values() for f in np.unique(t.frame)})
        raise ValueError(f"frame {frame} is in none of the tables (frames: {', '.join(map(str, listed))}): "
                         "pick one of those")
    return energy


def relevance_locality(atomwise: np.ndarray, fraction: float = 0.9) -> int:
    """How many atoms carry ``fraction`` of a prediction's relevance: the smallest k such that the
    k atoms of largest ``abs(R_i)`` hold at least ``fraction`` of ``Σ_i abs(R_i)``.

    A locality measure for comparing how intensive and extensive predictions are built (Esders et
    al. 2025, arXiv:2410.13833): an extensive energy spreads over every atom, an intensive
    property may rest on a few.

    Args:
        atomwise: (n_atoms,) per-atom relevance of one frame (any unit), e.g.
            :func:`atomwise_relevance`; real atoms only.
        fraction: in (0, 1].
    Returns:
        k, 1 ≤ k ≤ n_atoms.
    Raises:
        ValueError: fraction outside (0, 1], no atoms, non-finite values, or all relevance 0.
    """
    r = np.abs(np.asarray(atomwise, np.float64).reshape(-1))
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction is {fraction}; give a share in (0, 1], e.g. 0.9")
    if r.size == 0 or not np.isfinite(r).all() or r.sum() == 0:
        raise ValueError("relevance_locality needs finite per-atom relevances that are not all 0")
    share = np.cumsum(np.sort(r)[::-1]) / r.sum()
    return int(min(np.searchsorted(share, fraction * (1 - 1e-12)) + 1, r.size))


def per_species_agreement(predicted: np.ndarray, reference: np.ndarray, species: np.ndarray
                          ) -> dict[int, Agreement]:
    """:func:`atomwise_comparison` of per-atom values for each species apart, e.g. latent charges
    against xTB partial charges (Schütt et al. 2018, arXiv:1806.10349).

    Args:
        predicted, reference: (n,) per-atom values (e.g. e); species: (n,) atomic numbers.
    Returns:
        ``{Z: Agreement}`` for every species with at least two atoms and a non-constant
        reference and prediction (others are left out).
    """
    predicted, reference, species = (np.asarray(a).reshape(-1) for a in (predicted, reference, species))
    out = {}
    for z in np.unique(species):
        keep = species == z
        p, q = predicted[keep], reference[keep]
        if keep.sum() >= 2 and np.ptp(p) > 0 and np.ptp(q) > 0:
            out[int(z)] = atomwise_comparison(p, q)
    return out


def species_label(key: tuple[int, ...], names: dict[int, str] | None = None) -> str:
    """"Ar–Kr" for (18, 36): ``names[Z]`` if given, the element symbol for 1 ≤ Z ≤ 118,
    else "bead Z" (coarse-grained ids)."""
    names = names or {}

    def one(z: int) -> str:
        if z in names:
            return names[z]
        return chemical_symbols[z] if 1 <= z <= 118 else f"bead {z}"

    return "–".join(one(int(z)) for z in key)

