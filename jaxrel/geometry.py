"""Host-side periodic geometry (numpy): minimum images, cell checks and radial distributions.

The one home of jaxrel's host code for periodic cells: graph building, the MD and ASE
calculator input checks, the noble-gas data, the stability metrics and the analysis all
use these functions. Jitted device code (``jaxrel.graph.edge_vectors``, the noble-gas
energy) keeps its own ``jnp`` minimum image with the same formula.

Conventions:

* Lengths are in Å; every result is float64.
* A cell is a (3, 3) array whose rows are the lattice vectors; ``None`` means free space.
  Positions are Cartesian and may be unwrapped.
* The minimum image rounds fractional coordinates. It returns the shortest image of a
  displacement whenever that image is shorter than half the smallest cell height (the
  distance between opposite faces), so a neighbour cutoff needs every height ≥ 2 · cutoff
  and a radial distribution needs r_max ≤ half the smallest height; :func:`check_cell`
  enforces both.
* Bad input raises ``ValueError`` with one sentence that names the input and the fix.
"""

from __future__ import annotations

import numpy as np

_MIN_VOLUME = 1e-9
"""Smallest ``|det(cell)|`` in Å³ that :func:`check_cell` accepts as a non-degenerate cell."""

_R_MAX_TOLERANCE = 1e-12
"""Å by which r_max may exceed half the smallest cell height (float rounding of r_max)."""


def minimum_image(d, cell) -> np.ndarray:
    """Minimum-image form of displacement vectors.

    Computes frac = d · cell⁻¹ and returns (frac − round(frac)) · cell, the shortest
    image whenever that image is shorter than half the smallest cell height. The cell is
    not validated (see :func:`check_cell`).

    Args:
        d: (..., 3) float displacements, Å.
        cell: (3, 3) float, Å, rows are the lattice vectors; None for free space.

    Returns:
        (..., 3) float64, Å: the minimum images, or ``d`` itself when ``cell`` is None.
    """
    d = np.asarray(d, dtype=np.float64)
    if cell is None:
        return d
    cell = np.asarray(cell, dtype=np.float64)
    frac = _times(d, np.linalg.inv(cell))
    return _times(frac - np.round(frac), cell)


def _times(x: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """x @ matrix for (..., 3) rows, written elementwise: the same arithmetic for any leading
    shape (a BLAS product may round a stack of vectors differently from one vector)."""
    return x[..., 0:1] * matrix[0] + x[..., 1:2] * matrix[1] + x[..., 2:3] * matrix[2]


def cluster_coordinates(positions, atoms, cell) -> np.ndarray:
    """Each atom set as one cluster in space, for the set's internal geometry.

    Periodic: the centre of a set is its atom whose farthest minimum-image partner in the
    set is nearest, and every atom gets its minimum-image displacement from the centre
    (the centre itself 0). A side between two atoms is the difference of their
    coordinates, so the set's geometry is one consistent cluster (a triplet's three angles
    sum to 180°) even when a side between two non-centre atoms is longer than half the
    cell, where its own minimum image would pick another image. For a connected triplet
    (edges shorter than the cutoff, every height ≥ 2 · cutoff, as :func:`check_cell`
    allows) the centre of a path i–j–k is j, and a triangle that closes in space is
    reproduced from any centre; a triangle whose three edges close only around the cell
    (they add up to a lattice vector) has no single-cluster geometry and gets the one
    seen from its centre. Sides from the centre equal their minimum images to the bit.

    Free space: the positions themselves.

    Args:
        positions: (n_atoms, 3) float, Å.
        atoms: (m, n) int atom indices, one set per row.
        cell: (3, 3) float, Å, rows are the lattice vectors; None for free space.

    Returns:
        (m, n, 3) float64, Å: coordinates of each set's atoms; only their differences
        have meaning.
    """
    positions = np.asarray(positions, dtype=np.float64)
    atoms = np.asarray(atoms)
    x = positions[atoms]
    if cell is None:
        return x
    d = minimum_image(x[:, None, :, :] - x[:, :, None, :], cell)   # d[:, a, b]: from atom a to atom b
    centre = np.argmin(np.linalg.norm(d, axis=-1).max(axis=-1), axis=1)
    return d[np.arange(len(atoms)), centre]


def cell_heights(cell) -> np.ndarray:
    """Perpendicular widths of periodic cells: ``h_k = V / |a_(k+1) × a_(k+2)|``.

    Args:
        cell: (3, 3) or (..., 3, 3) float, Å, rows are the lattice vectors a_0, a_1, a_2.

    Returns:
        (3,) or (..., 3) float64, Å: the distance between the two faces spanned by the
        other two vectors, for each lattice vector. Not validated: a degenerate cell gives
        zeros or NaN (see :func:`check_cell`).
    """
    cell = np.asarray(cell, dtype=np.float64)
    volume = np.abs(np.linalg.det(cell))
    faces = np.cross(cell[..., [1, 2, 0], :], cell[..., [2, 0, 1], :])
    return volume[..., None] / np.linalg.norm(faces, axis=-1)


def check_cell(cell, cutoff: float | None = None, *, r_max: float | None = None,
               per_frame: bool = False, whose: str = "the",
               fix: str = "use a smaller cutoff or replicate the cell (ase's Atoms.repeat)",
               ) -> np.ndarray:
    """Validate a periodic cell (or one cell per frame) and return it as float64.

    Args:
        cell: (3, 3) float, Å, rows are the lattice vectors; with ``per_frame`` also
            (n_frames, 3, 3), one cell per frame.
        cutoff: neighbour cutoff, Å (> 0); if given, every cell height must be at least
            2 · cutoff, so that an atom sees at most one image of another.
        r_max: range of a radial distribution, Å; if given, it must not exceed half the
            smallest cell height (by more than 1e-12 Å), beyond which minimum-image
            distances miss pairs.
        per_frame: accept one cell per frame, (n_frames, 3, 3), besides one (3, 3) cell.
        whose: who owns the cutoff, for the message ("the model's" gives "less than twice
            the model's 5.0 Å cutoff").
        fix: the advice that ends the message of a cell narrower than 2 · cutoff.

    Returns:
        The cell, float64, shaped as given.

    Raises:
        ValueError: a shape other than (3, 3) (or (n_frames, 3, 3) with ``per_frame``), a
            NaN or infinite entry, a degenerate cell (``|det| < 1e-9`` Å³), a cutoff that is not
            positive, a cell narrower than twice the cutoff, or r_max beyond half the
            smallest cell height. With one cell per frame, the message names the first bad
            frame.
    """
    cell = np.asarray(cell, dtype=np.float64)
    if cell.shape[-2:] != (3, 3) or cell.ndim not in ((2, 3) if per_frame else (2,)):
        shapes = "(3, 3) array (or one per frame, (n_frames, 3, 3))" if per_frame else "(3, 3) array"
        raise ValueError(f"cell has shape {cell.shape}; pass a {shapes} with the lattice vectors "
                         "as rows, Å")
    cells = cell.reshape(-1, 3, 3)

    def name(k: int) -> str:
        return "cell" if cell.ndim == 2 else f"cell of frame {k}"

    bad = np.flatnonzero(~np.isfinite(cells).all(axis=(1, 2)))
    if bad.size:
        raise ValueError(f"{name(bad[0])} {cells[bad[0]].tolist()} holds NaN or inf; "
                         "pass finite lattice vectors, Å")
    volume = np.abs(np.linalg.det(cells))
    bad = np.flatnonzero(volume < _MIN_VOLUME)
    if bad.size:
        raise ValueError(f"{name(bad[0])} {cells[bad[0]].tolist()} has volume "
                         f"{volume[bad[0]]:.3g} Å³; pass three linearly independent lattice vectors "
                         "as rows")
    heights = cell_heights(cells).min(axis=-1)
    if cutoff is not None:
        if not cutoff > 0:
            raise ValueError(f"cutoff is {cutoff} Å; it must be positive")
        bad = np.flatnonzero(heights < 2 * cutoff)
        if bad.size:
            raise ValueError(f"the periodic {name(bad[0])} is {heights[bad[0]]:.3g} Å wide, less than "
                             f"twice {whose} {round(float(cutoff), 6)} Å cutoff; {fix}")
    if r_max is not None:
        half = heights.min() / 2
        if r_max > half + _R_MAX_TOLERANCE:
            raise ValueError(f"r_max = {r_max} Å exceeds half the smallest cell width (half the "
                             f"smallest cell height, face to face, is {half:.3f} Å), beyond which "
                             "minimum-image distances miss pairs; lower r_max")
    return cell


def partial_rdf(positions, species, cell, pair: tuple[int, int], *, r_max: float,
                n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Radial distribution of the species pair ``pair`` over frames, on bins of [0, r_max].

    Periodic (``cell`` given): the partial g_ab(r) with minimum-image distances,
    g_ab(r) = Σ_f V_f n_ab,f(r) / (N_pairs · n_frames · 4π/3 (r_hi³ − r_lo³)), with
    n_ab,f the pair count of frame f in the shell, V_f its cell volume and N_pairs = N_a N_b
    (a ≠ b) or N_a (N_a − 1)/2 (a = b, each pair once), so that an ideal gas gives g = 1.

    Free space (``cell`` None, molecules): there is no volume, so the result is the
    normalised pair-distance density p(r) in 1/Å, with ∫₀^r_max p dr = 1 over the pairs
    within r_max.

    Bin edges are ``np.linspace(0, r_max, n_bins + 1)``; a distance equal to r_max
    falls in the last bin (``np.histogram``).

    Args:
        positions: (n_frames, n_atoms, 3) or (n_atoms, 3) float, Å (wrapped or unwrapped).
        species: (n_atoms,) int atomic numbers, the same in every frame.
        cell: (3, 3) or (n_frames, 3, 3) float, Å, rows are the lattice vectors; or None.
        pair: atomic numbers (Z_a, Z_b).
        r_max: Å (> 0); with a cell, at most half the smallest cell height.
        n_bins: number of bins (≥ 1).

    Returns:
        ``(r_center (n_bins,) Å, values (n_bins,))``, float64: g_ab(r) (dimensionless) with
        a cell, p(r) in 1/Å without.

    Raises:
        ValueError: positions not (n_frames, n_atoms, 3) or (n_atoms, 3), a species of
            ``pair`` absent (or a = b with one atom), r_max or n_bins not positive, a cell
            rejected by :func:`check_cell` (r_max beyond half its smallest height included)
            or with a frame count other than the positions', or (free space) no pair
            within r_max.
    """
    positions = np.asarray(positions, dtype=np.float64)
    if positions.ndim not in (2, 3) or positions.shape[-1] != 3:
        raise ValueError(f"positions have shape {positions.shape}; pass (n_frames, n_atoms, 3) "
                         "or (n_atoms, 3), Å")
    positions = positions.reshape(-1, *positions.shape[-2:])
    species = np.asarray(species)
    a, b = np.flatnonzero(species == pair[0]), np.flatnonzero(species == pair[1])
    same = pair[0] == pair[1]
    if len(a) == 0 or len(b) == 0 or (same and len(a) < 2):
        raise ValueError(f"no atom pairs of species pair {tuple(pair)}: the frames contain species "
                         f"{', '.join(map(str, np.unique(species).tolist()))}; pick a pair of those")
    if not (r_max > 0 and n_bins >= 1):
        raise ValueError(f"r_max = {r_max} Å and n_bins = {n_bins}; both must be positive")
    edges = np.linspace(0.0, r_max, n_bins + 1)
    n_frames = len(positions)
    cells = None
    if cell is not None:
        cells = check_cell(cell, r_max=r_max, per_frame=True)
        if cells.ndim == 3 and len(cells) != n_frames:
            raise ValueError(f"cell holds {len(cells)} frames but positions hold {n_frames}; "
                             "pass one (3, 3) cell or one per frame")
        cells = np.broadcast_to(cells, (n_frames, 3, 3))
    iu = np.triu_indices(len(a), k=1) if same else None
    counts = np.zeros(n_bins)
    for f in range(n_frames):
        d = minimum_image(positions[f, b][None, :, :] - positions[f, a][:, None, :],
                          None if cells is None else cells[f])
        r = np.sqrt(np.einsum("...k,...k->...", d, d))
        r = r[iu] if same else r.ravel()
        weight = 1.0 if cells is None else abs(np.linalg.det(cells[f])) / len(r)
        counts += np.histogram(r, n_bins, (0.0, r_max))[0] * weight   # the bins of edges, found faster
    r_center = 0.5 * (edges[:-1] + edges[1:])
    if cells is None:
        if counts.sum() == 0:
            raise ValueError(f"no {tuple(pair)} pair lies within r_max = {r_max} Å: raise r_max")
        return r_center, counts / (counts.sum() * np.diff(edges))
    shell = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    return r_center, counts / (n_frames * shell)
