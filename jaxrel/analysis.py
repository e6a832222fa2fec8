"""What the network learned, read off the n-body relevance tables of ``jaxrel explain``.

Pure numpy functions over the tables (each body order n a dict of arrays, see
:class:`Explained`), figures (matplotlib, PNG) and :func:`write_analysis`, which runs
everything on an explained folder and writes PNG, CSV and ``analysis.json``.

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

import csv
import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase.data import chemical_symbols
from matplotlib.figure import Figure

TABLE_KEYS = ("frame", "atoms", "species", "relevance", "distances")
FIGURE_DPI = 150


@dataclass
class Explained:
    """The output folder of ``jaxrel explain`` in memory.

    tables: {n: table} for each body order n, a table being
        ``frame`` (m,) int | frame number (as in ``summary["frames"][k]["frame"]``),
        ``atoms`` (m, n) int | atom indices within the frame, sorted,
        ``species`` (m, n) int | atomic numbers (bead ids for coarse-grained data),
        ``relevance`` (m,) float64 | eV,
        ``distances`` (m, n(n−1)/2) float64 | Å, pairs (0,1), (0,2), (1,2), …,
        ``angles`` (m, 3) float64 | degrees, the angle at atoms[:, 0], [:, 1], [:, 2] (n = 3 only).
    summary: summary.json as a dict (``frames``: per-frame energy, Σ relevance, residuals).
    positions: (n_frames, n_atoms, 3) | Å, the explained frames (None if not stored).
    species: (n_atoms,) int | atomic numbers.
    cell: (n_frames, 3, 3) | Å, rows are lattice vectors; None for free molecules.
    frame_index: (n_frames,) int | the frame number of each row of ``positions``.
    """

    tables: dict[int, dict[str, np.ndarray]]
    summary: dict
    positions: np.ndarray | None = None
    species: np.ndarray | None = None
    cell: np.ndarray | None = None
    frame_index: np.ndarray | None = None


def load_explained(path) -> Explained:
    """Read ``nbody.npz`` and ``summary.json`` from a ``jaxrel explain --out`` folder.

    Args:
        path: the folder.

    Returns:
        :class:`Explained`.
    Raises:
        FileNotFoundError: the folder or one of the two files is missing.
        ValueError: a file is not a readable npz/JSON, a table key is missing or has the
            wrong shape, or the tables and the summary come from different runs (frame
            numbers or per-frame body-order totals disagree).
    """
    path = Path(path)
    npz, summary_path = path / "nbody.npz", path / "summary.json"
    for file in (npz, summary_path):
        if not file.is_file():
            raise FileNotFoundError(f"{file} does not exist: run `jaxrel explain --out {path}` first")
    try:
        with np.load(npz, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{npz} is not a readable npz file ({err}): rerun jaxrel explain") from None
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{summary_path} is not valid JSON ({err}): rerun jaxrel explain") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("frames"), list):
        raise ValueError(f"{summary_path} has no 'frames' list: rerun jaxrel explain")
    orders = sorted(int(m.group(1)) for key in arrays if (m := re.fullmatch(r"order(\d+)_frame", key)))
    tables = {}
    for n in orders:
        keys = TABLE_KEYS + (("angles",) if n == 3 else ())
        missing = [f"order{n}_{k}" for k in keys if f"order{n}_{k}" not in arrays]
        if missing:
            raise ValueError(f"{npz} lacks {', '.join(missing)}: rerun jaxrel explain")
        table = {k: arrays[f"order{n}_{k}"] for k in keys}
        m = len(table["frame"])
        widths = {"atoms": n, "species": n, "distances": n * (n - 1) // 2, "angles": 3}
        for k, width in widths.items():
            if k in table and table[k].shape != (m, width):
                raise ValueError(f"{npz}: order{n}_{k} has shape {table[k].shape}, expected ({m}, {width}); "
                                 "rerun jaxrel explain")
        tables[n] = table
    _check_summary_matches(tables, summary, npz)
    return Explained(tables=tables, summary=summary, positions=arrays.get("positions"),
                     species=arrays.get("species"), cell=arrays.get("cell"),
                     frame_index=arrays.get("frame_index"))


def _check_summary_matches(tables, summary, npz) -> None:
    """Frame numbers and per-frame body-order totals of the tables agree with the summary."""
    frames = [f["frame"] for f in summary["frames"]]
    for n, table in tables.items():
        rows = _frame_rows(table["frame"], frames)
        totals = np.bincount(rows, weights=table["relevance"], minlength=len(frames))
        scale = np.bincount(rows, weights=np.abs(table["relevance"]), minlength=len(frames))
        listed = np.array([f.get("body_order_totals_eV", {}).get(str(n), 0.0) for f in summary["frames"]])
        bad = np.flatnonzero(np.abs(totals - listed) > 1e-6 * scale + 1e-9)
        if len(bad):
            k = bad[0]
            raise ValueError(f"the {n}-body terms of frame {frames[k]} in {npz} sum to {totals[k]:.6g} eV but "
                             f"summary.json lists {listed[k]:.6g} eV: the two files come from different runs, "
                             "rerun jaxrel explain")


def _frame_rows(frame: np.ndarray, frames: list[int]) -> np.ndarray:
    """Position of each table row's frame number in ``frames``; ValueError if absent."""
    frames = np.asarray(frames)
    order = np.argsort(frames)
    pos = np.clip(np.searchsorted(frames[order], frame), 0, max(len(frames) - 1, 0))
    found = frames[order][pos] == frame if len(frames) else np.zeros(len(frame), bool)
    if not found.all():
        raise ValueError(f"the tables list frame {int(frame[~found][0])}, which summary.json does not "
                         f"(frames: {', '.join(map(str, frames.tolist()))}): rerun jaxrel explain")
    return order[pos]


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


def _require_terms(table: dict, n: int) -> None:
    if table is None or len(table["relevance"]) == 0:
        raise ValueError(f"the {n}-body table is empty: explain the frames with --order {n} or higher")


def pair_relevance_curve(table2: dict, *, r_max: float | None = None,
                         n_bins: int = 40) -> dict[tuple[int, int], dict]:
    """Mean 2-body relevance against distance, per species pair.

    Bins are shared by all pairs: ``n_bins`` equal widths from the shortest distance in the
    table to ``r_max``. Pair relevance as a function of distance is the decay curve of
    Esders et al. 2025 (arXiv:2410.13833) and the 2-body profile of Bonneau et al. 2024
    (arXiv:2407.04526).

    Args:
        table2: the 2-body table (``Explained.tables[2]``).
        r_max: upper end of the bins, Å (default: the longest distance in the table).
        n_bins: number of bins.

    Returns:
        {(Z_a, Z_b) sorted: {"r_center" (n_bins,) Å, "mean" (n_bins,) eV, "sem" (n_bins,) eV,
        standard error of the mean, "count" (n_bins,) int}}. Empty bins have count 0 and mean
        and sem 0 (mask them with count > 0); bins with one term have sem 0.
    Raises:
        ValueError: an empty table, or no term at or below ``r_max``.
    """
    _require_terms(table2, 2)
    r = table2["distances"][:, 0]
    lo = float(r.min())
    hi = float(r.max()) if r_max is None else float(r_max)
    if hi < lo:
        raise ValueError(f"no 2-body term lies within r_max = {hi} Å (shortest distance {lo:.3f} Å): raise r_max")
    bins = _grouped_bins(np.sort(table2["species"], axis=1), r, table2["relevance"],
                         _bin_edges(r, lo, hi, n_bins))
    return {key: {"r_center": b["center"], "mean": b["mean"], "sem": b["sem"], "count": b["count"]}
            for key, b in bins.items()}


def _cell_half_width(cell: np.ndarray) -> float:
    """Half the smallest distance between opposite faces over all frames' cells, Å."""
    cell = np.asarray(cell, np.float64).reshape(-1, 3, 3)
    volume = np.abs(np.linalg.det(cell))
    widths = [volume / np.linalg.norm(np.cross(cell[:, i], cell[:, j]), axis=-1)
              for i, j in ((1, 2), (2, 0), (0, 1))]
    return float(0.5 * np.min(widths))


def radial_distribution(positions: np.ndarray, species: np.ndarray, cell: np.ndarray | None,
                        pair: tuple[int, int], *, r_max: float,
                        n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Radial distribution of species pair ``pair`` over frames, bins on [0, r_max].

    Periodic (``cell`` given): the partial g_ab(r) with minimum-image distances,
    g_ab(r) = ⟨V n_ab(r) / (N_pairs · 4π/3 (r_hi³ − r_lo³))⟩_frames with n_ab the pair count
    in the shell and N_pairs = N_a N_b (a ≠ b) or N_a(N_a − 1)/2 (a = b), so that an ideal
    gas gives g = 1. This is the structure overlaid on pair relevance by Bonneau et al. 2024
    (arXiv:2407.04526).

    Free space (``cell`` None, molecules): there is no volume, so the result is the
    normalised pair-distance density p(r) in 1/Å, ∫₀^r_max p dr = 1 over the pairs within
    r_max (label plots accordingly, see :func:`rdf_label`).

    Args:
        positions: (n_frames, n_atoms, 3) Å.
        species: (n_atoms,) int atomic numbers (same for every frame).
        cell: (n_frames, 3, 3) or (3, 3) Å, rows are lattice vectors, or None.
        pair: (Z_a, Z_b).
        r_max: Å; periodic cells need r_max ≤ half the smallest face-to-face width.
        n_bins: number of bins.

    Returns:
        ``(r_center (n_bins,) Å, g (n_bins,))``.
    Raises:
        ValueError: a species of ``pair`` is absent (or a = b with one atom), r_max beyond the
            minimum-image range, or (free space) no pair within r_max.
    """
    positions = np.asarray(positions, np.float64).reshape(-1, *np.shape(positions)[-2:])
    species = np.asarray(species)
    a, b = np.flatnonzero(species == pair[0]), np.flatnonzero(species == pair[1])
    same = pair[0] == pair[1]
    if len(a) == 0 or len(b) == 0 or (same and len(a) < 2):
        raise ValueError(f"no atom pairs of species pair {tuple(pair)}: the frames contain species "
                         f"{', '.join(map(str, np.unique(species).tolist()))}; pick a pair of those")
    edges = _bin_edges(np.zeros(0), 0.0, float(r_max), n_bins)
    n_frames = len(positions)
    if cell is not None:
        cells = np.broadcast_to(np.asarray(cell, np.float64), (n_frames, 3, 3))
        half = _cell_half_width(cells)
        if r_max > half + 1e-12:
            raise ValueError(f"r_max = {r_max} Å exceeds half the smallest cell width ({half:.3f} Å), beyond "
                             "which minimum-image distances miss pairs: lower r_max")
    iu = np.triu_indices(len(a), k=1) if same else None
    counts = np.zeros(n_bins)
    for f in range(n_frames):
        d = positions[f, b][None, :, :] - positions[f, a][:, None, :]
        if cell is not None:
            frac = d @ np.linalg.inv(cells[f])
            d = (frac - np.round(frac)) @ cells[f]
        r = np.linalg.norm(d, axis=-1)
        r = r[iu] if same else r.ravel()
        weight = 1.0 if cell is None else abs(np.linalg.det(cells[f])) / len(r)
        counts += np.histogram(r, edges)[0] * weight
    r_center = 0.5 * (edges[:-1] + edges[1:])
    width = np.diff(edges)
    if cell is None:
        if counts.sum() == 0:
            raise ValueError(f"no {tuple(pair)} pair lies within r_max = {r_max} Å: raise r_max")
        return r_center, counts / (counts.sum() * width)
    shell = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    return r_center, counts / (n_frames * shell)


def rdf_label(cell: np.ndarray | None) -> str:
    """Axis label of :func:`radial_distribution`'s result: g(r) (periodic) or p(r) (free space)."""
    return "g(r)" if cell is not None else "pair-distance density p(r) (1/Å), free space"


def _triplet_centres(table3: dict) -> tuple[np.ndarray, np.ndarray]:
    """Centre atom of each triplet: the vertex opposite the longest side.

    Returns:
        ``(keys (m, 3) int (Z_end1, Z_centre, Z_end2) with the ends sorted, centre (m,) int in
        0..2, the position of the centre within atoms[row])``. Ties between equal longest
        sides go to the first side in the order (0,1), (0,2), (1,2).
    """
    longest = np.argmax(table3["distances"], axis=1)
    centre = np.array([2, 1, 0])[longest]
    ends = np.array([[0, 1], [0, 2], [1, 2]])[longest]
    rows = np.arange(len(centre))
    z_ends = np.sort(table3["species"][rows[:, None], ends], axis=1)
    keys = np.stack([z_ends[:, 0], table3["species"][rows, centre], z_ends[:, 1]], axis=1)
    return keys, centre


def triplet_angle_profile(table3: dict, *, n_bins: int = 36) -> dict[tuple[int, int, int], dict]:
    """Mean 3-body relevance against the angle at the centre atom, per species triplet.

    The centre is the atom joined to both others by the two shortest sides (the vertex
    opposite the longest side), as in the angular 3-body analyses of Bonneau et al. 2024
    (arXiv:2407.04526) and Esders et al. 2025 (arXiv:2410.13833).

    Args:
        table3: the 3-body table (``Explained.tables[3]``).
        n_bins: equal-width bins on [0°, 180°].

    Returns:
        {(Z_end1, Z_centre, Z_end2), ends sorted: {"angle_center" (n_bins,) degrees, "mean"
        (n_bins,) eV, "sem" (n_bins,) eV, "count" (n_bins,) int}}; empty bins have count 0.
    Raises:
        ValueError: an empty table.
    """
    _require_terms(table3, 3)
    keys, centre = _triplet_centres(table3)
    angle = table3["angles"][np.arange(len(centre)), centre]
    bins = _grouped_bins(keys, angle, table3["relevance"], _bin_edges(angle, 0.0, 180.0, n_bins))
    return {key: {"angle_center": b["center"], "mean": b["mean"], "sem": b["sem"], "count": b["count"]}
            for key, b in bins.items()}


def triplet_distance_profile(table3: dict, *, r_max: float | None = None,
                             n_bins: int = 40) -> dict[tuple[int, int, int], dict]:
    """Mean 3-body relevance against the shortest side of the triplet, per species triplet.

    Keys as in :func:`triplet_angle_profile`; bins from the shortest side in the table to
    ``r_max`` (default: the longest shortest side).

    Returns:
        {(Z_end1, Z_centre, Z_end2): {"r_center" (n_bins,) Å, "mean", "sem" (n_bins,) eV,
        "count" (n_bins,) int}}.
    Raises:
        ValueError: an empty table, or no triplet's shortest side at or below ``r_max``.
    """
    _require_terms(table3, 3)
    keys, _ = _triplet_centres(table3)
    r = table3["distances"].min(axis=1)
    lo = float(r.min())
    hi = float(r.max()) if r_max is None else float(r_max)
    if hi < lo:
        raise ValueError(f"no triplet's shortest side lies within r_max = {hi} Å (shortest {lo:.3f} Å): raise r_max")
    bins = _grouped_bins(keys, r, table3["relevance"], _bin_edges(r, lo, hi, n_bins))
    return {key: {"r_center": b["center"], "mean": b["mean"], "sem": b["sem"], "count": b["count"]}
            for key, b in bins.items()}


def body_order_shares(tables: dict[int, dict], summary: dict) -> dict:
    """Share of the relevance carried by each body order, per frame and over all frames.

    For frame f with n-body totals R_n(f) = Σ of its n-body terms and the higher-order
    residual ρ(f) (summary ``higher_order_residual_eV``, the terms above the listed orders):

    * energy share (signed): R_n(f) / (Σ_m R_m(f) + ρ(f)), i.e. of Σ of all walk relevances;
      ρ(f) gets the remaining share, so the shares and the residual share sum to 1.
    * |R| share: Σ_{n-body terms}|R| / (Σ_{all listed terms}|R| + |ρ(f)|), with |ρ(f)| the
      residual's share.

    Signed shares are ill-conditioned when a frame's Σ R is near zero (a model whose
    species shifts absorb the mean energy): "pooled" divides the sums over all frames
    and is the stable summary; "mean" averages the per-frame shares. A zero denominator
    gives share 0. Body-order shares are the analysis of Esders et al. 2025
    (arXiv:2410.13833) and Bonneau et al. 2024 (arXiv:2407.04526).

    Args:
        tables: {n: table} (``Explained.tables``).
        summary: summary.json as a dict (``Explained.summary``).

    Returns:
        {"orders": [n, …], "frames": [frame numbers],
         "energy_share": {"n": {"pooled", "mean", "per_frame": [...]}, …, "residual": {…}},
         "abs_share": same layout,
         "conservation_error_eV": {"per_frame", "max_abs"} (energy − shifts − Σ relevance),
         "higher_order_residual_eV": {"per_frame", "max_abs"}}.
    Raises:
        ValueError: no frames in the summary, or table frames absent from it.
    """
    frames = [f["frame"] for f in summary["frames"]]
    if not frames:
        raise ValueError("summary.json lists no frames: rerun jaxrel explain with a non-empty --frames")
    orders = sorted(tables)
    n_frames = len(frames)
    signed, absolute = {}, {}
    for n in orders:
        rows = _frame_rows(tables[n]["frame"], frames)
        signed[str(n)] = np.bincount(rows, tables[n]["relevance"], n_frames)
        absolute[str(n)] = np.bincount(rows, np.abs(tables[n]["relevance"]), n_frames)
    residual = np.array([f["higher_order_residual_eV"] for f in summary["frames"]], np.float64)
    signed["residual"], absolute["residual"] = residual, np.abs(residual)

    def shares(parts: dict) -> dict:
        total = sum(parts.values())
        pooled_total = total.sum()
        out = {}
        for name, part in parts.items():
            per_frame = np.divide(part, total, out=np.zeros(n_frames), where=total != 0)
            out[name] = {"pooled": float(part.sum() / pooled_total) if pooled_total != 0 else 0.0,
                         "mean": float(per_frame.mean()), "per_frame": per_frame.tolist()}
        return out

    conservation = np.array([f["conservation_error_eV"] for f in summary["frames"]], np.float64)
    return {"orders": orders, "frames": frames, "energy_share": shares(signed), "abs_share": shares(absolute),
            "conservation_error_eV": {"per_frame": conservation.tolist(),
                                      "max_abs": float(np.abs(conservation).max())},
            "higher_order_residual_eV": {"per_frame": residual.tolist(),
                                         "max_abs": float(np.abs(residual).max())}}


def interaction_strength(table2: dict, *, r_min: float | None = None,
                         n_bins: int = 20) -> dict[tuple[int, int], dict]:
    """Interaction strength per species pair and its exponential decay length.

    Strength is the mean |R_2| over all pair terms of a species pair. The decay length λ
    comes from a least-squares fit of log(mean |R_2| in a distance bin) = a − r/λ over the
    bins at r ≥ ``r_min``, with r the mean distance of the terms in each bin (Esders et
    al., "Analyzing atomic interactions in molecules as learned by neural networks",
    J. Chem. Theory Comput. 2025, arXiv:2410.13833). Bins are shared by all pairs:
    ``n_bins`` equal widths between the shortest and longest distance in the table.

    Args:
        table2: the 2-body table.
        r_min: Å, leave out bins below (e.g. the short-range repulsive wall); default all.
        n_bins: number of distance bins.

    Returns:
        {(Z_a, Z_b): {"mean_abs_eV", "count", "decay_length_A" (None when fewer than two
        bins enter the fit or mean |R_2| does not decrease), "amplitude_eV" exp(a) (None
        likewise), "n_fit_bins", "bins": {"r_mean" Å, "mean_abs" eV, "count"} per bin}}.
    Raises:
        ValueError: an empty table.
    """
    _require_terms(table2, 2)
    r = table2["distances"][:, 0]
    keys = np.sort(table2["species"], axis=1)
    magnitude = np.abs(table2["relevance"])
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
        out[key] = {"mean_abs_eV": float(np.dot(b["count"], b["mean"]) / count), "count": count,
                    "decay_length_A": decay, "amplitude_eV": amplitude, "n_fit_bins": int(fit.sum()),
                    "bins": {"r_mean": b["x_mean"], "mean_abs": b["mean"], "count": b["count"]}}
    return out


def atomwise_comparison(predicted: np.ndarray, reference: np.ndarray) -> dict:
    """Agreement of predicted atomwise energies with a reference local energy.

    Atomwise energies as the model's local decomposition follow Schütt et al. 2018
    (arXiv:1712.06113); comparing them with physically defined local energies follows
    Uhlig, Tovey, Holm 2024 (arXiv:2403.00377).

    Args:
        predicted, reference: same shape (any, flattened), eV.

    Returns:
        {"pearson_r", "r2" coefficient of determination 1 − Σ(p − ref)²/Σ(ref − mean ref)²
        (predicted taken as a prediction of reference, so it can be negative), "mae" eV,
        "rmse" eV, "slope", "intercept" eV of the least-squares line predicted = slope ·
        reference + intercept, "n"}.
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
    return {"pearson_r": float(np.sum(dq * dp) / np.sqrt(sq * sp)),
            "r2": float(1.0 - np.sum(error ** 2) / sq), "mae": float(np.mean(np.abs(error))),
            "rmse": float(np.sqrt(np.mean(error ** 2))), "slope": slope,
            "intercept": float(p.mean() - slope * q.mean()), "n": int(len(p))}


def atomwise_relevance(tables: dict[int, dict], n_atoms: int, frame: int) -> np.ndarray:
    """Per-atom energy of one frame from its n-body terms, each split equally among its atoms.

    E_i = R_1(i) + ½ Σ_j R_2(i, j) + ⅓ Σ_{j<k} R_3(i, j, k) + …, so Σ_i E_i equals the sum of
    all listed terms of the frame (species shifts, biases and terms above the listed
    orders are not included). Compare with reference local energies through
    :func:`atomwise_comparison` (Uhlig, Tovey, Holm 2024, arXiv:2403.00377).

    Args:
        tables: {n: table} (``Explained.tables``).
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
        rows = table["frame"] == frame
        atoms = table["atoms"][rows]
        if atoms.size and atoms.max() >= n_atoms:
            raise ValueError(f"frame {frame} has atom index {int(atoms.max())} but n_atoms = {n_atoms}: "
                             "pass the frame's number of atoms")
        found |= bool(rows.any())
        energy += np.bincount(atoms.ravel(), np.repeat(table["relevance"][rows] / n, n), n_atoms)
    if not found:
        listed = sorted({int(f) for t in tables.values() for f in np.unique(t["frame"])})
        raise ValueError(f"frame {frame} is in none of the tables (frames: {', '.join(map(str, listed))}): "
                         "pick one of those")
    return energy


def species_label(key: tuple[int, ...], names: dict[int, str] | None = None) -> str:
    """"Ar–Kr" for (18, 36): ``names[Z]`` if given, the element symbol for 1 ≤ Z ≤ 118,
    else "bead Z" (coarse-grained ids)."""
    names = names or {}

    def one(z: int) -> str:
        if z in names:
            return names[z]
        return chemical_symbols[z] if 1 <= z <= 118 else f"bead {z}"

    return "–".join(one(int(z)) for z in key)


def _save(fig: Figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=FIGURE_DPI, bbox_inches="tight")
    return path


def _colour(i: int) -> str:
    return f"C{i % 10}"


def plot_pair_curves(curves: dict, path, *, rdf: dict | None = None, reference: dict | None = None,
                     title: str = "", names: dict[int, str] | None = None,
                     rdf_label: str = "g(r)") -> Path:
    """Mean 2-body relevance ± standard error against distance, one colour per species pair.

    Args:
        curves: :func:`pair_relevance_curve` output (empty bins are not drawn).
        path: PNG to write.
        rdf: optional {pair: (r Å, g)} from :func:`radial_distribution`, dotted on a twin axis.
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
        shown = c["count"] > 0
        r, mean, sem = c["r_center"][shown], c["mean"][shown], c["sem"][shown]
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
    return _save(fig, path)


def plot_triplet_profiles(profiles: dict, path, *, xlabel: str = "angle at the centre atom (deg)",
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
        x = p["angle_center"] if "angle_center" in p else p["r_center"]
        shown = p["count"] > 0
        x, mean, sem = x[shown], p["mean"][shown], p["sem"][shown]
        ax.plot(x, mean, "o-", ms=3, color=_colour(i), label=species_label(key, names))
        ax.fill_between(x, mean - sem, mean + sem, color=_colour(i), alpha=0.25, lw=0)
        if reference and key in reference:
            ax.plot(*reference[key], "--", color=_colour(i), label=f"{species_label(key, names)} reference")
    ax.axhline(0.0, color="0.6", lw=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("mean 3-body relevance R₃ (eV)")
    ax.legend(fontsize=8, title="end–centre–end", title_fontsize=8)
    return _save(fig, path)


def plot_body_order_shares(shares: dict, path) -> Path:
    """Bars of the pooled energy share and |R| share per body order (and the residual),
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
        parts = shares[kind]
        names = list(parts)
        pooled = [parts[k]["pooled"] for k in names]
        spread = [np.std(parts[k]["per_frame"]) for k in names]
        ax.bar(range(len(names)), pooled, yerr=spread, color=[_colour(i) for i in range(len(names))],
               capsize=3)
        ax.set_xticks(range(len(names)), [f"{k}-body" if k != "residual" else "residual" for k in names])
        ax.axhline(0.0, color="0.6", lw=0.8)
        ax.set_title(f"{title}, {len(shares['frames'])} frames", fontsize=10)
    return _save(fig, path)


def plot_decay(strength: dict, path, *, names: dict[int, str] | None = None) -> Path:
    """Mean |R₂| per distance bin on a log axis with the fitted exponential a − r/λ.

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
        b = s["bins"]
        shown = (b["count"] > 0) & (b["mean_abs"] > 0)
        label = species_label(key, names)
        ax.semilogy(b["r_mean"][shown], b["mean_abs"][shown], "o", ms=4, color=_colour(i), label=label)
        if s["decay_length_A"] is not None:
            r = b["r_mean"][shown]
            ax.semilogy(r, s["amplitude_eV"] * np.exp(-r / s["decay_length_A"]), "-", color=_colour(i),
                        label=f"{label} fit, λ = {s['decay_length_A']:.3g} Å")
    ax.set_xlabel("distance r (Å)")
    ax.set_ylabel("mean |R₂| (eV)")
    ax.legend(fontsize=8)
    return _save(fig, path)


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
        label = (f"n = {stats['n']}, r = {stats['pearson_r']:.3f}, R² = {stats['r2']:.3f}\n"
                 f"MAE = {stats['mae']:.3g} eV, RMSE = {stats['rmse']:.3g} eV\n"
                 f"fit y = {stats['slope']:.3f} x + {stats['intercept']:.3g} eV")
    fig = Figure(figsize=(4.8, 4.6))
    ax = fig.add_subplot()
    ax.plot(x, y, ".", ms=3, alpha=0.6, label=label)
    lo, hi = min(x.min(), y.min()), max(x.max(), y.max())
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _key(key: tuple[int, ...]) -> str:
    return "-".join(map(str, key))


def _jsonable(value):
    """Arrays → lists, tuple keys → "18-36", numpy scalars → Python (JSON without NaN)."""
    if isinstance(value, dict):
        return {(_key(k) if isinstance(k, tuple) else str(k)): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _binned_rows(results: dict, x_key: str, names) -> list[list]:
    return [[_key(key), species_label(key, names), float(x), float(m), float(s), int(c)]
            for key, r in sorted(results.items())
            for x, m, s, c in zip(r[x_key], r["mean"], r["sem"], r["count"])]


def write_analysis(explained: Explained, out_dir, *, names: dict[int, str] | None = None,
                   local_energies: np.ndarray | None = None, n_bins: int = 40) -> dict:
    """Run every analysis on an explained folder and write figures, CSV tables and JSON.

    Writes (each only when its inputs exist: pair analyses need 2-body terms, triplet
    profiles 3-body terms, the RDF stored positions, the atomwise plot ``local_energies``):
    ``pair_curves.png`` (with the RDF on a twin axis), ``triplet_angles.png``,
    ``triplet_distances.png``, ``body_order_shares.png``, ``decay.png``, ``atomwise.png``;
    ``pair_curves.csv``, ``rdf.csv``, ``triplet_angles.csv``, ``triplet_distances.csv``,
    ``interaction_strength.csv``; and ``analysis.json`` with every result (no NaN or inf:
    undefined values are null, empty bins have count 0).

    Args:
        explained: :func:`load_explained` output.
        out_dir: folder to write into (created).
        names: species labels {Z: label}, e.g. {1: "bead 1"} for coarse-grained data.
        local_energies: optional (n_frames, n_atoms) eV reference local energies of the
            explained frames in summary order, compared with :func:`atomwise_relevance`
            (which leaves out species shifts: subtract them from the reference first).
        n_bins: distance bins of the pair curves, RDF and triplet distance profiles.

    Returns:
        {"figures": {name: path relative to out_dir}, "tables": {name: relative path},
         "json": "analysis.json"}.
    Raises:
        ValueError: ``local_energies`` of the wrong shape, or as the analyses above.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables = explained.tables
    figures, csvs = {}, {}
    result: dict = {"units": {"distance": "Å", "energy": "eV", "angle": "degree"},
                    "references": {"pair_curves, rdf": "Bonneau et al. 2024, arXiv:2407.04526",
                                   "interaction_strength, decay": "Esders et al. 2025, arXiv:2410.13833",
                                   "atomwise": "Schütt et al. 2018, arXiv:1712.06113; "
                                               "Uhlig, Tovey, Holm 2024, arXiv:2403.00377"}}
    result["body_order_shares"] = body_order_shares(tables, explained.summary)
    figures["body_order_shares"] = plot_body_order_shares(result["body_order_shares"], out / "body_order_shares.png")

    if 2 in tables and len(tables[2]["relevance"]):
        curves = pair_relevance_curve(tables[2], n_bins=n_bins)
        result["pair_curves"] = curves
        csvs["pair_curves"] = out / "pair_curves.csv"
        _write_csv(csvs["pair_curves"], ["pair", "label", "r_center_A", "mean_eV", "sem_eV", "count"],
                   _binned_rows(curves, "r_center", names))
        rdf, label = None, "g(r)"
        if explained.positions is not None and explained.species is not None:
            r_max = float(tables[2]["distances"].max())
            if explained.cell is not None:
                r_max = min(r_max, _cell_half_width(explained.cell))
            rdf = {key: radial_distribution(explained.positions, explained.species, explained.cell, key,
                                            r_max=r_max, n_bins=n_bins) for key in curves}
            label = rdf_label(explained.cell)
            result["rdf"] = {"kind": label, "curves": {key: {"r_center": r, "g": g} for key, (r, g) in rdf.items()}}
            csvs["rdf"] = out / "rdf.csv"
            _write_csv(csvs["rdf"], ["pair", "label", "r_center_A", "g"],
                       [[_key(key), species_label(key, names), float(x), float(y)]
                        for key, (r, g) in sorted(rdf.items()) for x, y in zip(r, g)])
        figures["pair_curves"] = plot_pair_curves(curves, out / "pair_curves.png", rdf=rdf, names=names,
                                                  rdf_label=label, title="2-body relevance against distance")
        strength = interaction_strength(tables[2])
        result["interaction_strength"] = strength
        csvs["interaction_strength"] = out / "interaction_strength.csv"
        _write_csv(csvs["interaction_strength"],
                   ["pair", "label", "count", "mean_abs_eV", "decay_length_A", "amplitude_eV", "n_fit_bins"],
                   [[_key(k), species_label(k, names), s["count"], s["mean_abs_eV"],
                     "" if s["decay_length_A"] is None else s["decay_length_A"],
                     "" if s["amplitude_eV"] is None else s["amplitude_eV"], s["n_fit_bins"]]
                    for k, s in sorted(strength.items())])
        figures["decay"] = plot_decay(strength, out / "decay.png", names=names)

    if 3 in tables and len(tables[3]["relevance"]):
        for name, profile, x_key, xlabel in (
                ("triplet_angles", triplet_angle_profile(tables[3]), "angle_center", "angle at the centre atom (deg)"),
                ("triplet_distances", triplet_distance_profile(tables[3], n_bins=n_bins), "r_center",
                 "shortest side of the triplet (Å)")):
            result[name] = profile
            csvs[name] = out / f"{name}.csv"
            _write_csv(csvs[name], ["triplet", "label", f"{x_key}_{'deg' if x_key == 'angle_center' else 'A'}",
                                    "mean_eV", "sem_eV", "count"], _binned_rows(profile, x_key, names))
            figures[name] = plot_triplet_profiles(profile, out / f"{name}.png", xlabel=xlabel, names=names)

    if local_energies is not None:
        frames = result["body_order_shares"]["frames"]
        local_energies = np.asarray(local_energies, np.float64)
        if local_energies.ndim != 2 or len(local_energies) != len(frames):
            raise ValueError(f"local_energies has shape {local_energies.shape}, expected ({len(frames)}, n_atoms): "
                             "one row per explained frame")
        predicted = np.stack([atomwise_relevance(tables, local_energies.shape[1], f) for f in frames])
        result["atomwise"] = atomwise_comparison(predicted, local_energies)
        figures["atomwise"] = plot_atomwise(predicted, local_energies, out / "atomwise.png",
                                            xlabel="reference local energy (eV)",
                                            ylabel="atomwise relevance energy (eV)")

    (out / "analysis.json").write_text(json.dumps(_jsonable(result), indent=1, allow_nan=False, ensure_ascii=False),
                                       encoding="utf-8")
    return {"figures": {k: str(p.relative_to(out)) for k, p in figures.items()},
            "tables": {k: str(p.relative_to(out)) for k, p in csvs.items()}, "json": "analysis.json"}
