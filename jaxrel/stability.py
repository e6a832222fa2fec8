"""MD stability and structure metrics of Fu et al., "Forces are not Enough: Benchmark and
Critical Evaluation for Machine Learning Force Fields with Molecular Simulations",
TMLR 2023 (arXiv:2210.07237), computed with numpy over stored trajectories.

* Bond instability (their MD17 criterion): a simulation is unstable from the first frame in
  which any covalent bond of the reference structure deviates by more than Δ = 0.5 Å
  from its mean reference length.
* h(r) (molecules): the distribution of all interatomic distances, a probability density
  in 1/Å; its error is ``∫ |h_sim(r) − h_ref(r)| dr`` (dimensionless, between 0 and 2).
* g_ab(r) (periodic liquids, e.g. water O–O, H–H, H–O): the partial radial distribution
  function under the minimum-image convention; its error is ``∫ |g_sim(r) − g_ref(r)| dr`` in Å.
* Energy drift (NVE): slope of a least-squares line through the conserved energy, in
  meV/atom/ps.

Structure of one-species periodic liquids (coarse-grained water or methane beads, argon),
jaxrel's additions for coarse-grained models: the pair and three-body structure of the
first coordination shell.

* First shell (:func:`first_shell`): the first peak of g(r), position (Å) and height, and
  the first minimum after it, the first-shell radius.
* Angle distribution (:func:`shell_distributions`): the angles θ_jik between every pair of
  neighbours j, k of an atom i within the first-shell radius, as a density in 1/degree on
  [0°, 180°]; its error ``∫ |p_sim(θ) − p_ref(θ)| dθ`` is dimensionless, between 0 and 2.
* Tetrahedral order (:func:`tetrahedral_order`, Errington & Debenedetti 2001, Nature 409,
  318, DOI 10.1038/35053024): q_i = 1 − 3/8 Σ_{j<k} (cos ψ_jik + 1/3)² over the four
  nearest neighbours, 1 for a perfect tetrahedron and 0 on average for an ideal gas. It is
  the observable of water's hydrogen-bond network; the report gives it for every
  one-species liquid. Its distribution is a density on the whole range of q, [−3, 1]; its
  error ``∫ |p_sim(q) − p_ref(q)| dq`` is between 0 and 2.

All integrals are Riemann sums over the histogram bins, ``Σ_k |Δ_k| Δx``, which for h(r) and
g(r) equals Fu et al.'s "mean absolute difference × r_max" (their ``mae(x, y, xlim)``).
Neighbours and distances in periodic cells are minimum images
(:func:`jaxrel.geometry.minimum_image`). Positions are in Å, times in ps, energies in eV,
angles in degrees, cells (3, 3) in Å with the cell vectors as rows; all arrays are
converted to float64.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from ase.data import chemical_symbols, covalent_radii

from jaxrel.geometry import cell_heights, check_cell, minimum_image, partial_rdf
from jaxrel.md import ENSEMBLES

# Distances per chunk of frames in the histogram helper (≈ 100 MB of float64 temporaries).
_DISTANCES_PER_CHUNK = 1_000_000

COLLAPSE_FRACTION = 0.7
"""Default of :func:`time_to_collapse`: atoms collapse below 0.7 × the shortest reference
distance of their species pair."""

REPORT_DISTANCES = 5_000_000
""":func:`stability_report` reads at most this many pair distances (n_frames × n_atoms
(n_atoms − 1)/2) of the reference, and of each replica's structure: all frames when they
hold fewer, else that many frames (but at least two) evenly spaced, the first and the last
included. Molecules keep all their frames; 258 CG water beads keep 150 frames."""

ANGLE_BINS = 90
"""Bins of the angle distribution on [0°, 180°] (2° wide)."""

Q_RANGE = (-3.0, 1.0)
"""The range of the tetrahedral order parameter q (Errington & Debenedetti 2001), on which
its distribution is histogrammed."""

Q_BINS = 200
"""Bins of the distribution of q on :data:`Q_RANGE` (0.02 wide)."""

RDF_SMOOTHING = (0.1, 0.3)
"""Å: widths of the moving averages through which :func:`first_shell` reads g(r) to find
its first peak (narrow, to keep the peak's height) and its first minimum (wide: the trough
is broad and shallow, for CG water g ≈ 0.9 from 3.4 to 3.8 Å)."""


def _trajectory_array(positions, name: str = "positions") -> np.ndarray:
    """``positions`` as float64 (n_frames, n_atoms, 3), or ValueError naming ``name``."""
    positions = np.asarray(positions, dtype=np.float64)
    if positions.ndim != 3 or positions.shape[-1] != 3:
        raise ValueError(f"{name} has shape {positions.shape}; expected (n_frames, n_atoms, 3)")
    if positions.shape[0] == 0 or positions.shape[1] == 0:
        raise ValueError(f"{name} has shape {positions.shape}; it needs at least one frame "
                         "and one atom")
    return positions


def _species_array(species, n_atoms: int) -> np.ndarray:
    """Atomic numbers as int (n_atoms,), or ValueError when the count or a number is wrong."""
    species = np.asarray(species)
    if species.shape != (n_atoms,):
        raise ValueError(f"species has shape {species.shape} but the positions hold "
                         f"{n_atoms} atoms; pass one atomic number per atom")
    species = species.astype(np.int64)
    bad = np.flatnonzero((species < 1) | (species >= len(covalent_radii)))
    if bad.size:
        raise ValueError(f"atom {bad[0]} has species {species[bad[0]]}, which is not an "
                         "atomic number (1-118)")
    return species


def bonds_from_reference(positions, species, scale: float = 1.25) -> tuple[np.ndarray, np.ndarray]:
    """Covalent bonds of a molecule in free space and their reference lengths.

    Atoms i < j are bonded when r_ij < scale · (r_cov,i + r_cov,j) in the first frame, with
    the covalent radii of Cordero et al. 2008 (``ase.data.covalent_radii``). Fu et al. 2023
    (arXiv:2210.07237) take bonds from ASE's ``natural_cutoffs`` neighbour list (r_ij <
    r_cov,i + r_cov,j + 0.3 Å skin) and compare with the bond length averaged over the
    reference trajectory; passing several frames does the same here.

    Args:
        positions: (n_atoms, 3) or (n_frames, n_atoms, 3) float, Å.
        species: (n_atoms,) int atomic numbers.
        scale: multiplier of the summed covalent radii (dimensionless, > 0).

    Returns:
        ``(pairs (n_bonds, 2) int64 with i < j, lengths (n_bonds,) float64 Å)``: lengths are
        the mean over the given frames. ``n_bonds`` may be 0 (e.g. a noble gas).

    Raises:
        ValueError: positions not of shape (n_atoms, 3) or (n_frames, n_atoms, 3), species
            count not n_atoms or not atomic numbers, or scale not positive.
    """
    positions = np.asarray(positions, dtype=np.float64)
    frames = _trajectory_array(positions[None] if positions.ndim == 2 else positions)
    species = _species_array(species, frames.shape[1])
    if not scale > 0:
        raise ValueError(f"scale is {scale}; it must be a positive multiplier of the covalent radii")
    i, j = np.triu_indices(frames.shape[1], k=1)
    first = np.linalg.norm(frames[0, j] - frames[0, i], axis=-1)
    bonded = first < scale * (covalent_radii[species[i]] + covalent_radii[species[j]])
    pairs = np.stack([i[bonded], j[bonded]], axis=1).astype(np.int64)
    return pairs, _bond_lengths(frames, pairs).mean(axis=0)


def _bond_lengths(frames: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """(n_frames, n_bonds) free-space distances of the atom pairs, Å."""
    return np.linalg.norm(frames[:, pairs[:, 1]] - frames[:, pairs[:, 0]], axis=-1)


def _time_array(time_ps, n_frames: int) -> np.ndarray:
    time_ps = np.asarray(time_ps, dtype=np.float64)
    if time_ps.shape != (n_frames,):
        raise ValueError(f"time_ps has shape {time_ps.shape} but the trajectory has "
                         f"{n_frames} frames; pass one time (ps) per frame")
    return time_ps


def time_to_bond_instability(positions, time_ps, pairs, reference_lengths,
                             threshold: float = 0.5) -> float | None:
    """First time at which any bond deviates from its reference length by more than ``threshold``.

    Fu et al. 2023 (arXiv:2210.07237), MD17 stability: unstable at the first frame with
    ``max_(i,j)∈bonds |r_ij − b_ij| > Δ``, Δ = 0.5 Å. A bond length that is not finite (NaN or
    inf positions) also counts as a deviation.

    Args:
        positions: (n_frames, n_atoms, 3) float, Å, one replica.
        time_ps: (n_frames,) float, ps, the time of each frame.
        pairs: (n_bonds, 2) int atom indices, e.g. from :func:`bonds_from_reference`.
        reference_lengths: (n_bonds,) float, Å.
        threshold: Δ in Å.

    Returns:
        ``time_ps`` of the first deviating frame as a float, or None when no bond deviates
        (also when there are no bonds).

    Raises:
        ValueError: shapes that do not match, or atom indices outside the trajectory.
    """
    frames = _trajectory_array(positions)
    time_ps = _time_array(time_ps, frames.shape[0])
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    reference_lengths = np.asarray(reference_lengths, dtype=np.float64)
    if reference_lengths.shape != (pairs.shape[0],):
        raise ValueError(f"reference_lengths has shape {reference_lengths.shape} for "
                         f"{pairs.shape[0]} bonds; pass one length (Å) per bond")
    if pairs.size and (pairs.min() < 0 or pairs.max() >= frames.shape[1]):
        raise ValueError(f"pairs index atoms {pairs.min()}..{pairs.max()} but the trajectory "
                         f"has {frames.shape[1]} atoms")
    deviation = np.abs(_bond_lengths(frames, pairs) - reference_lengths)
    broken = np.flatnonzero(~(deviation <= threshold).all(axis=1))
    return float(time_ps[broken[0]]) if broken.size else None


def time_to_collapse(positions, time_ps, reference_positions, species, fraction: float = COLLAPSE_FRACTION,
                     cell=None) -> float | None:
    """First time at which two atoms come closer than ``fraction`` × the shortest distance
    between atoms of their species pair anywhere in the reference data.

    jaxrel's addition to Fu et al.'s bond criterion (arXiv:2210.07237): a molecule can
    fall into a spurious minimum while every bond stays within 0.5 Å of its length, e.g.
    two hydrogens of one carbon collapsing to 0.5 Å (seen with PaiNN on ethanol at 500 K);
    atoms of a liquid can fall onto each other likewise. Distances are minimum-image
    distances (:func:`jaxrel.geometry.minimum_image`) when ``cell`` is given, in the
    trajectory and in the reference alike. Non-finite distances also count.

    Args:
        positions: (n_frames, n_atoms, 3) float, Å, one replica.
        time_ps: (n_frames,) float, ps.
        reference_positions: (n_ref_frames, n_atoms, 3) float, Å.
        species: (n_atoms,) int atomic numbers.
        fraction: dimensionless, in (0, 1].
        cell: (3, 3) float, Å, rows are the cell vectors of a periodic system; None for
            free space.

    Returns:
        ``time_ps`` of the first collapsed frame, or None.

    Raises:
        ValueError: shapes that do not match, ``fraction`` outside (0, 1], or a bad cell.
    """
    frames = _trajectory_array(positions)
    time_ps = _time_array(time_ps, frames.shape[0])
    pairs, floor = _collapse_floor(reference_positions, species, frames.shape[1], fraction, cell)
    return _first_collapse(frames, time_ps, pairs, floor, cell)


def _pair_distances(frames: np.ndarray, pairs: np.ndarray, cell):
    """Yield ``(first frame, (n_chunk, n_pairs) distances in Å)`` over chunks of frames: the
    minimum-image distances (free space when ``cell`` is None) of the atom pairs."""
    chunk = max(1, _DISTANCES_PER_CHUNK // max(len(pairs), 1))
    for start in range(0, frames.shape[0], chunk):
        d = frames[start:start + chunk, pairs[:, 1]] - frames[start:start + chunk, pairs[:, 0]]
        yield start, np.linalg.norm(minimum_image(d, cell), axis=-1)


def _collapse_floor(reference_positions, species, n_atoms: int, fraction: float,
                    cell) -> tuple[np.ndarray, np.ndarray]:
    """``(pairs (n_pairs, 2), floor (n_pairs,) Å)``: every atom pair i < j and ``fraction``
    × the shortest reference distance of its species pair (:func:`time_to_collapse`)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction is {fraction}; pass a number in (0, 1]")
    reference = _trajectory_array(reference_positions, "reference_positions")
    if reference.shape[1] != n_atoms:
        raise ValueError(f"reference_positions hold {reference.shape[1]} atoms but positions "
                         f"hold {n_atoms}; pass frames of the same system")
    species = _species_array(species, n_atoms)
    cell = None if cell is None else check_cell(cell)
    pairs = np.stack(np.triu_indices(n_atoms, k=1), axis=1)
    if not len(pairs):
        return pairs, np.zeros(0)
    _, kind = np.unique(np.sort(species[pairs], axis=1), axis=0, return_inverse=True)
    kind = kind.ravel()
    closest = np.full(len(pairs), np.inf)
    for _, distances in _pair_distances(reference, pairs, cell):
        closest = np.minimum(closest, distances.min(axis=0))
    shortest = np.full(kind.max() + 1, np.inf)
    np.minimum.at(shortest, kind, closest)
    return pairs, fraction * shortest[kind]


def _first_collapse(frames: np.ndarray, time_ps: np.ndarray, pairs: np.ndarray, floor: np.ndarray,
                    cell) -> float | None:
    """``time_ps`` of the first frame with a pair distance below its ``floor`` (or not
    finite), or None."""
    for start, distances in _pair_distances(frames, pairs, cell):
        collapsed = np.flatnonzero(~(distances >= floor).all(axis=1))
        if collapsed.size:
            return float(time_ps[start + collapsed[0]])
    return None


def _check_bins(r_max: float, n_bins: int) -> np.ndarray:
    if not (r_max > 0 and n_bins >= 1):
        raise ValueError(f"r_max={r_max} Å and n_bins={n_bins}; both must be positive")
    return np.linspace(0.0, r_max, n_bins + 1)


def _distance_histogram(frames: np.ndarray, i: np.ndarray, j: np.ndarray,
                        edges: np.ndarray) -> np.ndarray:
    """Histogram (len(edges) - 1,) of free-space |x_j − x_i| over all frames and the index
    pairs (i, j)."""
    counts = np.zeros(len(edges) - 1, dtype=np.int64)
    chunk = max(1, _DISTANCES_PER_CHUNK // max(len(i), 1))
    for start in range(0, frames.shape[0], chunk):
        d = frames[start:start + chunk, j] - frames[start:start + chunk, i]
        counts += np.histogram(np.linalg.norm(d, axis=-1), edges)[0]
    return counts


def distance_distribution(positions, r_max: float = 10.0, n_bins: int = 500) -> np.ndarray:
    """h(r): the distribution of interatomic distances of a molecule (Fu et al. 2023).

    h(r) = ⟨Σ_{i<j} δ(r − r_ij)⟩ normalised to a probability density over [0, r_max) Å
    (Fu et al., arXiv:2210.07237, MD17 observable), histogrammed on the bin edges
    ``np.linspace(0, r_max, n_bins + 1)``; distances of r_max or more are left out of the
    normalisation, as in their reference code. Free space (no periodic images).

    Args:
        positions: (n_frames, n_atoms, 3) float, Å.
        r_max: upper end of the histogram, Å.
        n_bins: number of bins.

    Returns:
        (n_bins,) float64 h(r) in 1/Å, with Σ h Δr = 1.

    Raises:
        ValueError: bad shape, fewer than two atoms, r_max or n_bins not positive, or no
            interatomic distance below r_max.
    """
    frames = _trajectory_array(positions)
    if frames.shape[1] < 2:
        raise ValueError("positions hold one atom; h(r) needs at least two")
    edges = _check_bins(r_max, n_bins)
    counts = _distance_histogram(frames, *np.triu_indices(frames.shape[1], k=1), edges)
    if counts.sum() == 0:
        raise ValueError(f"no interatomic distance is below r_max={r_max} Å; raise r_max")
    return counts / (counts.sum() * np.diff(edges))


def hr_mae(simulated, reference, r_max: float = 10.0, n_bins: int = 500) -> float:
    """h(r) error ``∫_0^r_max |h_sim(r) − h_ref(r)| dr`` (Fu et al. 2023, arXiv:2210.07237).

    Fu et al. write it as the mean absolute difference of the binned densities times r_max,
    which is the same Riemann sum. Dimensionless: 0 for identical distributions, 2 for
    distributions with no distance in common.

    Args:
        simulated, reference: (n_frames, n_atoms, 3) float, Å (frame counts may differ).
        r_max, n_bins: histogram range (Å) and bins, as in :func:`distance_distribution`.

    Raises:
        ValueError: as :func:`distance_distribution`.
    """
    difference = distance_distribution(simulated, r_max, n_bins) - distance_distribution(
        reference, r_max, n_bins)
    return _integrated_difference(difference, r_max / n_bins)


def _integrated_difference(difference: np.ndarray, width: float) -> float:
    """∫ |p − q| dx of two histograms on bins of ``width``: Σ_k |Δ_k| · width."""
    return float(np.abs(difference).sum() * width)


def rdf(positions, cell, species, pair: tuple[int, int], r_max: float = 6.0,
        n_bins: int = 500) -> np.ndarray:
    """Partial radial distribution function g_ab(r) of a periodic system.

    ``g_ab(r) = V / (N_pairs · n_frames) · counts(r) / (4π/3 (r_+³ − r_-³))``, where counts are
    the minimum-image distances between a-atoms and b-atoms in a bin ``[r_-, r_+)`` and
    N_pairs = N_a N_b (a ≠ b) or N_a (N_a − 1) / 2 (a = b, each pair once). An ideal gas
    gives g = 1. Fu et al. 2023 (arXiv:2210.07237, water) use this estimator except that
    for a = b they normalise by N_a² ordered pairs, a factor (N_a − 1)/N_a lower.
    Bin edges: ``np.linspace(0, r_max, n_bins + 1)``; defaults are their water settings.
    The estimator is :func:`jaxrel.geometry.partial_rdf`.

    Args:
        positions: (n_frames, n_atoms, 3) float, Å (wrapped or unwrapped).
        cell: (3, 3) float, Å, rows are the cell vectors; the box is fully periodic.
        species: (n_atoms,) int atomic numbers.
        pair: atomic numbers (Z_a, Z_b), e.g. (8, 1) for O–H.
        r_max: Å, at most half the smallest cell height.
        n_bins: number of bins.

    Returns:
        (n_bins,) float64 g_ab(r), dimensionless.

    Raises:
        ValueError: bad shapes, a degenerate cell, r_max above half the smallest cell
            height, or a pair species that is absent (or has one atom for a = b).
    """
    frames = _trajectory_array(positions)
    species = _species_array(species, frames.shape[1])
    _check_bins(r_max, n_bins)
    cell = check_cell(cell, r_max=r_max)
    n_a, n_b = (np.count_nonzero(species == z) for z in pair)
    if pair[0] == pair[1] and n_a < 2:
        raise ValueError(f"species {pair[0]} has {n_a} atoms; g(r) of a pair of like "
                         "atoms needs at least two")
    if n_a == 0 or n_b == 0:
        raise ValueError(f"pair {pair} names a species absent from the positions "
                         f"(present: {sorted(set(species.tolist()))})")
    return partial_rdf(frames, species, cell, pair, r_max=r_max, n_bins=n_bins)[1]


def rdf_error(simulated, reference, cell, species, pairs=None, r_max: float = 6.0,
              n_bins: int = 500) -> dict[str, float]:
    """RDF errors ``∫_0^r_max |g_sim(r) − g_ref(r)| dr`` per species pair, Å (Fu et al. 2023).

    Fu et al. (arXiv:2210.07237) report this for water's O–O, H–H and H–O RDFs, computed
    as the mean absolute difference of the binned g(r) times r_max (the same Riemann sum).

    Args:
        simulated, reference: (n_frames, n_atoms, 3) float, Å, same atoms and cell (frame
            counts may differ).
        cell: (3, 3) float, Å, rows are the cell vectors.
        species: (n_atoms,) int atomic numbers.
        pairs: sequence of (Z_a, Z_b); default every unordered pair of species present.
        r_max, n_bins: as in :func:`rdf`.

    Returns:
        ``{"O-O": ..., "H-O": ...}``: one float (Å) per pair, labelled by element symbols
        in ascending atomic number.

    Raises:
        ValueError: as :func:`rdf`.
    """
    pairs = _species_pairs(species) if pairs is None else [tuple(sorted(p)) for p in pairs]
    return _rdf_errors(*({p: rdf(x, cell, species, p, r_max, n_bins) for p in pairs}
                         for x in (simulated, reference)), r_max / n_bins)


def _species_pairs(species) -> list[tuple[int, int]]:
    """Every unordered pair (Z_a ≤ Z_b) of the species present, in ascending order."""
    present = sorted(set(np.asarray(species).astype(int).tolist()))
    return [(a, b) for n, a in enumerate(present) for b in present[n:]]


def _rdf_errors(simulated: dict, reference: dict, width: float) -> dict[str, float]:
    """:func:`rdf_error` of the g(r) per species pair {(Z_a, Z_b): (n_bins,)} on bins of
    ``width`` Å, labelled by element symbols."""
    return {f"{chemical_symbols[a]}-{chemical_symbols[b]}":
            _integrated_difference(simulated[a, b] - reference[a, b], width) for a, b in reference}


class FirstShell(NamedTuple):
    """The first coordination shell of a radial distribution function (:func:`first_shell`).

    Fields::

        peak_position     float or None | Å, the first peak of g(r)
        peak_height       float or None | g at the peak (smoothed), dimensionless
        minimum_position  float or None | Å, the first minimum after the peak: the
                          first-shell radius
    """

    peak_position: float | None
    peak_height: float | None
    minimum_position: float | None


def first_shell(r, g, smoothing: tuple[float, float] = RDF_SMOOTHING) -> FirstShell:
    """The first peak of g(r) and the first minimum after it (the first-shell radius).

    g is read through centred moving averages (an odd number of bins, at least one; near
    the ends the average of the bins inside), which keep histogram noise from making
    spurious extrema: over ``smoothing[0]`` Å for the peak, over ``smoothing[1]`` Å for the
    minimum. The first peak is the highest point of its smoothed g (in a liquid the first
    coordination peak is the highest); its height is that smoothed value. The first minimum
    is the lowest point of the other smoothed g after the peak and before the second shell,
    where that g, having fallen below 1, rises above 1 again (or the last bin).

    Args:
        r: (n_bins,) float, Å, evenly spaced bin centres (e.g. of
            :func:`jaxrel.geometry.partial_rdf`).
        g: (n_bins,) float, g(r), dimensionless.
        smoothing: widths of the moving averages for the peak and for the minimum, Å (≥ 0;
            0 reads g as it is).

    Returns:
        :class:`FirstShell`. All three are None when the smoothed g never exceeds 1 (no
        coordination shell: an ideal gas, or no pair within range); ``minimum_position`` is
        None when g does not fall below 1 after the peak, or is still falling at the last
        bin (the minimum lies beyond r_max).

    Raises:
        ValueError: r and g not of one shape (n_bins,) with n_bins ≥ 3, r not evenly
            increasing, a non-finite g, or a negative smoothing width.
    """
    r = np.asarray(r, dtype=np.float64)
    g = np.asarray(g, dtype=np.float64)
    if r.ndim != 1 or g.shape != r.shape or len(r) < 3:
        raise ValueError(f"r has shape {r.shape} and g {g.shape}; pass two (n_bins,) arrays with n_bins ≥ 3")
    step = np.diff(r)
    if not (step > 0).all() or not np.allclose(step, step[0], rtol=1e-6, atol=0.0):
        raise ValueError("r must be evenly spaced, increasing bin centres in Å")
    if not np.isfinite(g).all() or not min(smoothing) >= 0:
        raise ValueError(f"g must be finite and the smoothing widths {smoothing} Å not negative")

    def smoothed(width: float) -> np.ndarray:
        window = np.ones(int(round(width / step[0])) | 1)
        return np.convolve(g, window, "same") / np.convolve(np.ones_like(g), window, "same")

    near, wide = smoothed(smoothing[0]), smoothed(smoothing[1])
    peak = int(np.argmax(near))
    if not near[peak] > 1.0:
        return FirstShell(None, None, None)
    below = np.flatnonzero(wide[peak:] < 1.0)
    minimum = None
    if below.size:
        start = peak + below[0]
        above = np.flatnonzero(wide[start:] > 1.0)
        end = start + above[0] if above.size else len(wide)
        lowest = peak + int(np.argmin(wide[peak:end]))
        minimum = float(r[lowest]) if lowest < len(wide) - 1 else None
    return FirstShell(float(r[peak]), float(near[peak]), minimum)


def _nearest_neighbours(frames: np.ndarray, cell, r_shell: float | None):
    """Yield, over chunks of frames, ``(vectors (F, n, k, 3) Å, distances (F, n, k) Å)``: the
    minimum-image displacements from every atom to its k nearest other atoms, nearest first,
    with k = max(4, most atoms within ``r_shell`` of one atom), at most n_atoms − 1."""
    n_atoms = frames.shape[1]
    chunk = max(1, _DISTANCES_PER_CHUNK // n_atoms ** 2)
    diagonal = np.arange(n_atoms)
    for start in range(0, len(frames), chunk):
        x = frames[start:start + chunk]
        d = minimum_image(x[:, None, :, :] - x[:, :, None, :], cell)   # d[f, i, j] = x_j − x_i
        r = np.sqrt(np.einsum("...k,...k->...", d, d))
        r[:, diagonal, diagonal] = np.inf
        k = 4 if r_shell is None else max(4, int((r < r_shell).sum(axis=-1).max()))
        k = min(k, n_atoms - 1)
        nearest = np.argpartition(r, k - 1, axis=-1)[..., :k]
        nearest = np.take_along_axis(nearest, np.argsort(np.take_along_axis(r, nearest, -1), axis=-1), -1)
        yield np.take_along_axis(d, nearest[..., None], -2), np.take_along_axis(r, nearest, -1)


def _cosines(vectors: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """(..., k, k) cosines of the angles between the neighbour vectors (..., k, 3)."""
    unit = vectors / distances[..., None]
    return np.einsum("...ad,...bd->...ab", unit, unit)


def _q(vectors: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """(...) tetrahedral order q of the four nearest of the neighbours (..., k ≥ 4, 3)."""
    a, b = np.triu_indices(4, k=1)
    cosines = _cosines(vectors[..., :4, :], distances[..., :4])[..., a, b]
    return 1.0 - 0.375 * ((cosines + 1.0 / 3.0) ** 2).sum(axis=-1)


def _structure_input(positions, cell, least: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Positions as float64 (n_frames, n_atoms, 3) with at least ``least`` atoms, and the
    checked cell (or None)."""
    frames = _trajectory_array(positions)
    if frames.shape[1] < least:
        raise ValueError(f"positions hold {frames.shape[1]} atoms; this observable needs at least {least}")
    return frames, None if cell is None else check_cell(cell)


def tetrahedral_order(positions, cell=None) -> np.ndarray:
    """Tetrahedral order parameter of every atom (Errington & Debenedetti 2001).

    q_i = 1 − 3/8 Σ_{j=1}^{3} Σ_{k=j+1}^{4} (cos ψ_jik + 1/3)², with ψ_jik the angle at atom i
    between two of its four nearest neighbours (Errington & Debenedetti, Nature 409, 318
    (2001), DOI 10.1038/35053024). q = 1 for a
    perfect tetrahedron; for neighbours in independent random directions ⟨(cos ψ + 1/3)²⟩ =
    4/9, so ⟨q⟩ = 0 (an ideal gas). q ranges over [−3, 1] (−3: four neighbours in one
    direction). It measures water's tetrahedral hydrogen-bond network; for other liquids
    it is a plain measure of local order. All atoms are treated alike (one species).

    Args:
        positions: (n_frames, n_atoms, 3) float, Å, at least 5 atoms.
        cell: (3, 3) float, Å, rows are the cell vectors (minimum-image neighbours, exact
            while the four nearest lie within half the smallest cell height); None for free
            space.

    Returns:
        (n_frames, n_atoms) float64, dimensionless.

    Raises:
        ValueError: positions not (n_frames, n_atoms, 3) or with fewer than 5 atoms, or a
            bad cell (:func:`jaxrel.geometry.check_cell`).
    """
    frames, cell = _structure_input(positions, cell, 5)
    return np.concatenate([_q(*shells) for shells in _nearest_neighbours(frames, cell, None)])


class ShellDistributions(NamedTuple):
    """Distributions of the first neighbours of the atoms (:func:`shell_distributions`).

    Fields::

        angle   (n_angle_bins,) float64 or None | 1/degree, density of the angles θ_jik on
                [0°, 180°]; None without a first-shell radius
        q       (n_q_bins,) float64 | density of the tetrahedral order q on [−3, 1]
        mean_q  float | ⟨q⟩ over atoms and frames
    """

    angle: np.ndarray | None
    q: np.ndarray
    mean_q: float


def shell_distributions(positions, cell, r_shell: float | None, n_angle_bins: int = ANGLE_BINS,
                        n_q_bins: int = Q_BINS) -> ShellDistributions:
    """Angle distribution of the first shell and distribution of the tetrahedral order q.

    For every atom i and frame, the angles θ_jik between each pair of neighbours j, k closer
    than ``r_shell`` (minimum-image distances) are histogrammed on
    ``np.linspace(0, 180, n_angle_bins + 1)`` degrees, and q of :func:`tetrahedral_order`
    on ``np.linspace(-3, 1, n_q_bins + 1)`` (values rounded past the ends count in the end
    bins); both are normalised to densities (Σ p Δx = 1). An angle of exactly 180° falls in
    the last bin. All atoms are treated alike (one species). The report takes ``r_shell``
    from the first minimum of the reference g(r) (:func:`first_shell`).

    Args:
        positions: (n_frames, n_atoms, 3) float, Å, at least 5 atoms.
        cell: (3, 3) float, Å, rows are the cell vectors; None for free space.
        r_shell: first-shell radius, Å (> 0, at most half the smallest cell height), or
            None for q alone.
        n_angle_bins, n_q_bins: numbers of bins (≥ 1).

    Returns:
        :class:`ShellDistributions`. The angle density is all zeros when no atom has two
        neighbours within ``r_shell`` (so its error against any distribution is 1).

    Raises:
        ValueError: positions not (n_frames, n_atoms, 3) or with fewer than 5 atoms, a bad
            cell, r_shell not positive or beyond half the smallest cell height, or a number
            of bins below 1.
    """
    frames, cell = _structure_input(positions, cell, 5)
    half = np.inf if cell is None else cell_heights(cell).min() / 2
    if r_shell is not None and not 0 < r_shell <= half:
        raise ValueError(f"r_shell is {r_shell} Å; it must be positive and at most half the smallest cell "
                         f"height ({half:.3f} Å), beyond which minimum images miss neighbours")
    if n_angle_bins < 1 or n_q_bins < 1:
        raise ValueError(f"n_angle_bins = {n_angle_bins} and n_q_bins = {n_q_bins}; both must be at least 1")
    angles, q = np.zeros(n_angle_bins), np.zeros(n_q_bins)
    q_sum = 0.0
    for vectors, distances in _nearest_neighbours(frames, cell, r_shell):
        q_values = _q(vectors, distances)
        q += np.histogram(np.clip(q_values, *Q_RANGE), n_q_bins, Q_RANGE)[0]
        q_sum += q_values.sum()
        if r_shell is not None:
            pairs = np.triu_indices(distances.shape[-1], k=1)
            inside = (distances[..., pairs[0]] < r_shell) & (distances[..., pairs[1]] < r_shell)
            cosines = _cosines(vectors, distances)[..., pairs[0], pairs[1]][inside]
            angles += np.histogram(np.degrees(np.arccos(np.clip(cosines, -1.0, 1.0))), n_angle_bins,
                                   (0.0, 180.0))[0]
    angle = None
    if r_shell is not None:
        angle = angles / (max(angles.sum(), 1.0) * (180.0 / n_angle_bins))
    width = (Q_RANGE[1] - Q_RANGE[0]) / n_q_bins
    return ShellDistributions(angle, q / (q.sum() * width), q_sum / q.sum())


def energy_drift(time_ps, conserved_eV, n_atoms: int) -> float:
    """Drift of a conserved energy: slope of its least-squares line, in meV/atom/ps.

    Args:
        time_ps: (n_frames,) float, ps, at least two distinct times.
        conserved_eV: (n_frames,) float, eV, e.g. the total energy of an NVE run.
        n_atoms: atoms in the system (> 0).

    Returns:
        1000 · slope / n_atoms as a float (signed: positive means the energy grows).

    Raises:
        ValueError: mismatched shapes, fewer than two distinct times, non-finite values,
            or n_atoms < 1.
    """
    time_ps = np.asarray(time_ps, dtype=np.float64)
    conserved_eV = np.asarray(conserved_eV, dtype=np.float64)
    if time_ps.ndim != 1 or conserved_eV.shape != time_ps.shape:
        raise ValueError(f"time_ps {time_ps.shape} and conserved_eV {conserved_eV.shape} must "
                         "both be (n_frames,)")
    if np.unique(time_ps).size < 2:
        raise ValueError("energy drift needs at least two frames at different times")
    if not (np.isfinite(time_ps).all() and np.isfinite(conserved_eV).all()):
        raise ValueError("time_ps or conserved_eV holds NaN or inf; pass the frames before "
                         "the simulation became unstable")
    if n_atoms < 1:
        raise ValueError(f"n_atoms is {n_atoms}; it must be at least 1")
    slope = np.polyfit(time_ps, conserved_eV, 1)[0]
    return float(1000.0 * slope / n_atoms)


def _finite_or_none(x) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


def _mean_or_none(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _evenly_spaced(n_frames: int, n_atoms: int) -> np.ndarray:
    """Indices of the frames :func:`stability_report` reads out of ``n_frames`` of
    ``n_atoms`` atoms (:data:`REPORT_DISTANCES`): all, or evenly spaced ones with the first
    and the last."""
    n_used = min(n_frames, max(2, REPORT_DISTANCES // max(1, n_atoms * (n_atoms - 1) // 2)))
    return np.arange(n_used) * (n_frames - 1) // max(n_used - 1, 1)


STRUCTURE_KEYS = ("rdf_peak_position_A", "rdf_peak_height", "angle_distribution_error",
                  "q_distribution_error", "mean_q")
"""The first-shell observables of one-species liquids in a :func:`stability_report`, per
replica and as means over replicas."""


def _structure(shell: FirstShell, shells: ShellDistributions, reference: ShellDistributions) -> dict:
    """The :data:`STRUCTURE_KEYS` of one replica against the reference distributions."""
    return {"rdf_peak_position_A": shell.peak_position, "rdf_peak_height": shell.peak_height,
            "angle_distribution_error": None if reference.angle is None else _integrated_difference(
                shells.angle - reference.angle, 180.0 / len(reference.angle)),
            "q_distribution_error": _integrated_difference(
                shells.q - reference.q, (Q_RANGE[1] - Q_RANGE[0]) / len(reference.q)),
            "mean_q": float(shells.mean_q)}


def stability_report(traj, reference_positions, species, cell=None, *, molecule: bool,
                     ensemble: str, r_max: float | None = None, n_bins: int = 500) -> dict:
    """Stability and structure of every replica of an MD run against reference data.

    Per replica the instability time is the earliest of (a) the driver's
    ``unstable_time_ps`` (NaN where it ran to the end), (b) for molecules the bond
    criterion of :func:`time_to_bond_instability` with bonds and mean lengths from
    ``reference_positions`` (Fu et al. 2023, arXiv:2210.07237, Δ = 0.5 Å), (c) the atom
    collapse of :func:`time_to_collapse` (jaxrel's addition; minimum-image distances in
    periodic systems), and (d) the first frame with non-finite positions. h(r) error
    (molecules), RDF error (periodic systems, mean over species pairs) and, for
    ``ensemble="nve"``, the energy drift are computed from the frames strictly before that
    time (None when there are none, or fewer than two for the drift).

    Periodic systems of one species with at least 5 atoms (coarse-grained liquids) also get
    the first-shell observables :data:`STRUCTURE_KEYS` of the module docstring: the first
    peak of g(r) (:func:`first_shell`), the error of the angle distribution within the
    first-shell radius of the *reference* g(r) (the same radius for every replica; None
    when the reference g has no first minimum below r_max) and the error and mean of the
    tetrahedral order q (:func:`shell_distributions`). Other systems get None for them.

    Cost: the reference and each replica's structure are read from at most
    :data:`REPORT_DISTANCES` pair distances, evenly spaced frames when there are more (258
    CG water beads: 150 of the reference's 1500 frames); the bond lengths, the collapse
    floor, h(r), g(r) and the shell distributions all use those frames.

    The simulated time is the later of the last frame's time and the driver's instability
    times: a driver that stops when every replica is unstable does not log the block in
    which that happened, but simulated it. So no instability time exceeds it.

    Args:
        traj: a :class:`jaxrel.md.Trajectory` (or any object with its fields):
            ``positions`` (R, n_frames, n_atoms, 3) Å, ``time_ps`` (n_frames,) ps,
            ``conserved_eV`` (R, n_frames) eV, ``unstable_time_ps`` (R,) ps,
            ``stop_reason`` (R,) str or None, ``steps_per_second`` float.
        reference_positions: (n_ref_frames, n_atoms, 3) float, Å, e.g. the DFT data set.
        species: (n_atoms,) int atomic numbers.
        cell: (3, 3) float, Å (rows), for periodic systems; None for a molecule.
        molecule: True for one molecule in free space (bonds and h(r)); False for a
            periodic system (RDF; needs ``cell``).
        ensemble: "nve", "nvt-nh" or "nvt-langevin"; the drift is reported for "nve" only.
        r_max, n_bins: histogram range (Å) and bins of h(r) or g(r); r_max defaults to Fu et
            al.'s 10 Å for molecules and, for periodic systems, to their 6 Å or half the
            smallest cell height, whichever is smaller.

    Returns:
        A JSON-serialisable dict without NaN: ``stable`` (bool, all replicas),
        ``time_to_instability_ps`` (earliest over replicas, or None), ``hr_mae`` (mean over
        replicas, dimensionless, or None), ``rdf_error`` (mean over replicas, Å, or None),
        ``energy_drift_meV_per_atom_per_ps`` (mean over replicas, or None),
        ``steps_per_second`` (the driver's; None if it is NaN), ``simulated_time_ps`` (ps),
        the means over replicas of :data:`STRUCTURE_KEYS` (``rdf_peak_position_A`` Å,
        ``rdf_peak_height`` (g, dimensionless), ``angle_distribution_error`` and
        ``q_distribution_error`` (∫|Δp|, dimensionless, 0..2), ``mean_q``; None where they
        do not apply), ``reference_structure`` (None, or the reference's
        ``rdf_peak_position_A``, ``rdf_peak_height``, ``first_shell_radius_A`` (Å or None)
        and ``mean_q``), ``n_reference_frames`` (the reference frames read), and
        ``replicas``: one dict per replica with ``time_to_instability_ps``,
        ``instability`` ("driver", "bond", "collapse", "non-finite positions" or None),
        ``stop_reason``, ``n_frames_used`` (frames before the instability), ``hr_mae``,
        ``rdf_error`` (per pair), ``energy_drift_meV_per_atom_per_ps`` and
        :data:`STRUCTURE_KEYS`.

    Raises:
        ValueError: an empty trajectory, shapes that do not match, an unknown ensemble,
            ``molecule=False`` without a cell or ``molecule=True`` with one.
    """
    if ensemble not in ENSEMBLES:
        raise ValueError(f"ensemble is {ensemble!r}; expected one of {', '.join(ENSEMBLES)}")
    if molecule and cell is not None:
        raise ValueError("molecule=True measures bonds and h(r) in free space; pass cell=None "
                         "or molecule=False for a periodic system")
    if not molecule and cell is None:
        raise ValueError("molecule=False computes RDFs of a periodic system and needs its cell")
    positions = np.asarray(traj.positions, dtype=np.float64)
    if positions.ndim != 4 or positions.shape[-1] != 3 or 0 in positions.shape:
        raise ValueError(f"traj.positions has shape {positions.shape}; expected a non-empty "
                         "(n_replicas, n_frames, n_atoms, 3) array")
    n_replicas, n_frames, n_atoms, _ = positions.shape
    time_ps = _time_array(traj.time_ps, n_frames)
    reference = _trajectory_array(reference_positions, "reference_positions")
    if reference.shape[1] != n_atoms:
        raise ValueError(f"reference_positions hold {reference.shape[1]} atoms but the "
                         f"trajectory holds {n_atoms}; pass frames of the same system")
    reference = reference[_evenly_spaced(len(reference), n_atoms)]
    species = _species_array(species, n_atoms)
    driver_times = np.asarray(traj.unstable_time_ps, dtype=np.float64).reshape(-1)
    conserved = np.asarray(traj.conserved_eV, dtype=np.float64)
    if driver_times.shape != (n_replicas,) or conserved.shape != (n_replicas, n_frames):
        raise ValueError(f"traj.unstable_time_ps {driver_times.shape} and traj.conserved_eV "
                         f"{conserved.shape} do not match {n_replicas} replicas of "
                         f"{n_frames} frames")
    pairs, lengths = bonds_from_reference(reference, species) if molecule else (None, None)
    atom_pairs, floor = _collapse_floor(reference, species, n_atoms, COLLAPSE_FRACTION, cell)
    if r_max is None:
        r_max = 10.0 if molecule else min(6.0, cell_heights(cell).min() / 2)
    edges = _check_bins(r_max, n_bins)
    reference_g = {} if molecule else {p: rdf(reference, cell, species, p, r_max, n_bins)
                                       for p in _species_pairs(species)}
    structure = not molecule and len(reference_g) == 1 and n_atoms >= 5
    reference_structure = None
    if structure:
        centres = 0.5 * (edges[:-1] + edges[1:])
        ((like, g),) = reference_g.items()
        shell = first_shell(centres, g)
        reference_shells = shell_distributions(reference, cell, shell.minimum_position)
        reference_structure = {"rdf_peak_position_A": shell.peak_position, "rdf_peak_height": shell.peak_height,
                               "first_shell_radius_A": shell.minimum_position,
                               "mean_q": float(reference_shells.mean_q)}
    replicas = []
    for r in range(n_replicas):
        non_finite = np.flatnonzero(~np.isfinite(positions[r]).all(axis=(1, 2)))
        # in this order, so that a tie names the plainest cause (NaN positions also break bonds)
        candidates = {"driver": _finite_or_none(driver_times[r]),
                      "non-finite positions": float(time_ps[non_finite[0]]) if non_finite.size else None}
        if molecule:
            candidates["bond"] = time_to_bond_instability(positions[r], time_ps, pairs, lengths)
        candidates["collapse"] = _first_collapse(positions[r], time_ps, atom_pairs, floor, cell)
        found = {k: t for k, t in candidates.items() if t is not None}
        source = min(found, key=found.get) if found else None
        t_unstable = found[source] if source else None
        keep = np.ones(n_frames, bool) if t_unstable is None else time_ps < t_unstable
        used = np.flatnonzero(keep)
        frames = positions[r, used[_evenly_spaced(len(used), n_atoms)]] if used.size else None
        hr = rdf_errors = drift = None
        shell_values = dict.fromkeys(STRUCTURE_KEYS)
        if frames is not None and molecule:
            hr = hr_mae(frames, reference, r_max, n_bins)
        elif frames is not None:
            g = {p: rdf(frames, cell, species, p, r_max, n_bins) for p in reference_g}
            rdf_errors = _rdf_errors(g, reference_g, r_max / n_bins)
            if structure:
                shell_values = _structure(first_shell(centres, g[like]),
                                          shell_distributions(frames, cell, shell.minimum_position),
                                          reference_shells)
        if ensemble == "nve" and keep.sum() >= 2:
            drift = energy_drift(time_ps[keep], conserved[r, keep], n_atoms)
        reason = traj.stop_reason[r]
        replicas.append({"time_to_instability_ps": t_unstable, "instability": source,
                         "stop_reason": None if reason is None else str(reason),
                         "n_frames_used": int(keep.sum()),
                         "hr_mae": hr, "rdf_error": rdf_errors,
                         "energy_drift_meV_per_atom_per_ps": drift, **shell_values})
    times = [rep["time_to_instability_ps"] for rep in replicas if rep["time_to_instability_ps"] is not None]
    return {
        "stable": not times,
        "time_to_instability_ps": min(times) if times else None,
        "hr_mae": _mean_or_none([rep["hr_mae"] for rep in replicas]),
        "rdf_error": _mean_or_none([float(np.mean(list(rep["rdf_error"].values())))
                                    for rep in replicas if rep["rdf_error"]]),
        "energy_drift_meV_per_atom_per_ps": _mean_or_none(
            [rep["energy_drift_meV_per_atom_per_ps"] for rep in replicas]),
        "steps_per_second": _finite_or_none(traj.steps_per_second),
        "simulated_time_ps": float(np.nanmax(np.append(driver_times, time_ps[-1]))),
        **{key: _mean_or_none([rep[key] for rep in replicas]) for key in STRUCTURE_KEYS},
        "reference_structure": reference_structure,
        "n_reference_frames": len(reference),
        "replicas": replicas,
    }
