"""The local chemical potential of a molecule as a trained potential sees it.

A probe atom of species Z_p is placed at every point r of a regular grid around a molecule,
and the probe's own atomwise energy is read off the model:

    Φ(r) = E_p(r) − E_p(∞)   (eV)

with E_p(r) the probe's atomwise energy (:meth:`jaxrel.models.Potential.atomwise_energy`) in
the field of the molecule and E_p(∞) that of an isolated probe atom (no neighbours). The
molecule acts on the probe, not the reverse: the graph for each grid point is the molecule's
own graph plus the directed edges molecule atom j → probe (sender j, receiver the probe) for
every atom within the cutoff, and no edge from the probe to the molecule, so the molecule's
features and atomwise energies stay exactly those of the molecule alone. Φ is therefore 0
(to rounding) at every point farther than the cutoff from all atoms, negative where the
model binds the probe and positive where it repels it. The map was introduced with the
deep tensor neural network (Schütt et al., Nat. Commun. 2017, arXiv:1609.08259) and
generalised to 3-D explanations of atomistic networks by Schütt, Gastegger, Tkatchenko and
Müller 2018, "Quantum-chemical insights from interpretable atomistic neural networks"
(arXiv:1806.10349).

:func:`local_chemical_potential` computes Φ on the grid (a :class:`ChemicalPotential`),
:func:`write_cube` writes it as a Gaussian cube file, :func:`plane_slice` interpolates it on
the plane of the molecule, and :func:`plot_plane_slice` / :func:`plot_isosurfaces` draw it.
Free space only: a periodic frame has no "outside" for the probe to come from.
"""

from __future__ import annotations

import tempfile
import time
from functools import partial
from pathlib import Path
from typing import NamedTuple

import ase
import ase.data
import jax
import jax.numpy as jnp
import numpy as np
from ase.io.cube import write_cube as ase_write_cube
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from scipy.ndimage import map_coordinates
from scipy.spatial import cKDTree

from jaxrel.analysis.numerics import species_label
from jaxrel.analysis.plots import save_figure
from jaxrel.files import atomic_write, write_json
from jaxrel.graph import Graph, build_graphs
from jaxrel.nn.functional import safe_norm

MAX_GRID_POINTS = 20_000_000
"""Largest grid :func:`local_chemical_potential` evaluates (≈ 45 min on a 2-core CPU for ethanol
with a 64-feature SchNet; see benchmarks/chempot_speed.py)."""


class ChemicalPotential(NamedTuple):
    """Φ(r) of one probe species on a regular grid around one molecule.

    Grid point (i, j, k) lies at ``origin + (i, j, k) * spacing`` (Å).

    Fields::

        origin     (3,)          float64 | Å, the grid point (0, 0, 0)
        spacing    (3,)          float64 | Å, the step along x, y and z
        values     (nx, ny, nz)  float64 | eV, Φ = E_probe(r) − E_probe(isolated)
        probe      int                   | atomic number of the probe
        positions  (n_atoms, 3)  float64 | Å, the molecule
        species    (n_atoms,)    int32   | atomic numbers of the molecule
        cutoff     float                 | Å, the model's cutoff: Φ = 0 farther than this from every atom
        seconds    float                 | wall time of the computation, compilation included
    """

    origin: np.ndarray
    spacing: np.ndarray
    values: np.ndarray
    probe: int
    positions: np.ndarray
    species: np.ndarray
    cutoff: float
    seconds: float

    @property
    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The grid's x, y and z coordinates, Å: three 1-D arrays of lengths nx, ny, nz."""
        return tuple(self.origin[d] + self.spacing[d] * np.arange(self.values.shape[d]) for d in range(3))

    def points(self) -> np.ndarray:
        """Every grid point, (nx, ny, nz, 3) float64, Å."""
        return np.stack(np.meshgrid(*self.axes, indexing="ij"), axis=-1)

    def summary(self) -> dict:
        """The grid and the extremes of Φ as JSON types.

        Keys: ``probe`` (Z), ``probe_symbol``, ``grid_shape``, ``n_points``, ``origin_A``,
        ``spacing_A``, ``cutoff_A``, ``seconds``, and for ``min`` and ``max`` a dict with ``phi_eV``,
        ``position_A`` (the grid point), ``nearest_atom`` (its index), ``nearest_species`` and
        ``distance_A`` (from the grid point to that atom).
        """
        flat = self.values.ravel()
        tree = cKDTree(self.positions)

        def extreme(k: int) -> dict:
            point = self.origin + self.spacing * np.array(np.unravel_index(k, self.values.shape))
            distance, atom = tree.query(point)
            return {"phi_eV": float(flat[k]), "position_A": point.tolist(), "nearest_atom": int(atom),
                    "nearest_species": int(self.species[atom]), "distance_A": float(distance)}

        return {"probe": self.probe, "probe_symbol": species_label((self.probe,)),
                "grid_shape": list(self.values.shape), "n_points": int(self.values.size),
                "origin_A": self.origin.tolist(), "spacing_A": self.spacing.tolist(),
                "cutoff_A": self.cutoff, "seconds": self.seconds,
                "min": extreme(int(np.argmin(flat))), "max": extreme(int(np.argmax(flat)))}


def probe_number(probe: int | str) -> int:
    """The atomic number of a probe given as a number, a number in text ('1') or a symbol ('H').

    Raises:
        ValueError: text that is neither an element symbol nor a positive integer.
    """
    if isinstance(probe, str):
        text = probe.strip()
        if text.isdigit():
            probe = int(text)
        elif text.capitalize() in ase.data.atomic_numbers:
            return ase.data.atomic_numbers[text.capitalize()]
        else:
            raise ValueError(f"probe {probe!r} is neither an element symbol nor an atomic number; "
                             "give e.g. H or 1")
    if int(probe) < 1:
        raise ValueError(f"probe {probe} is not a positive atomic number; give e.g. H or 1")
    return int(probe)


def with_probe(graph: Graph, position: jax.Array, probe: jax.Array, cutoff: float) -> Graph:
    """One frame's graph with a probe atom appended that receives messages but sends none (jit-safe).

    The probe becomes atom ``graph.n_atoms``; one edge per molecule atom j is appended with
    sender j and receiver the probe, switched on (``edge_mask``) when j is a real atom closer
    than ``cutoff`` to the probe. No edge has the probe as sender, so every atomwise energy
    of the molecule is unchanged.

    Args:
        graph: one free-space frame (unbatched), n atoms and m edges.
        position: (3,) Å, the probe's position.
        probe: () int, the probe's atomic number.
        cutoff: Å, the model's cutoff.

    Returns:
        A :class:`~jaxrel.graph.Graph` with n + 1 atoms and m + n edges.
    """
    n = graph.n_atoms
    position = jnp.asarray(position, graph.positions.dtype)
    distance = safe_norm(graph.positions - position)
    return Graph(positions=jnp.concatenate([graph.positions, position[None]]),
                 species=jnp.concatenate([graph.species, jnp.asarray(probe, graph.species.dtype)[None]]),
                 senders=jnp.concatenate([graph.senders, jnp.arange(n, dtype=graph.senders.dtype)]),
                 receivers=jnp.concatenate([graph.receivers, jnp.full(n, n, graph.receivers.dtype)]),
                 node_mask=jnp.concatenate([graph.node_mask, jnp.ones(1, bool)]),
                 edge_mask=jnp.concatenate([graph.edge_mask, graph.node_mask & (distance < cutoff)]))


@partial(jax.jit, static_argnames="potential")
def _probe_energies(potential, params, graph: Graph, probe: jax.Array, points: jax.Array) -> jax.Array:
    """E_probe (m,) eV for a probe at each of ``points`` (m, 3) Å in the field of ``graph``."""
    def one(point):
        return potential.atomwise_energy(params, with_probe(graph, point, probe, potential.config.cutoff))[-1]

    return jax.vmap(one)(points)


@partial(jax.jit, static_argnames="potential")
def _atomwise_energy(potential, params, graph: Graph) -> jax.Array:
    return potential.atomwise_energy(params, graph)


def _grid(positions: np.ndarray, spacing, padding: float) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    """``(origin (3,) Å, spacing (3,) Å, shape)`` of the grid centred on the atoms' bounding box that
    spans at least the box plus ``padding`` on every side."""
    step = np.broadcast_to(np.asarray(spacing, np.float64), (3,)).copy()
    if not (np.isfinite(step).all() and (step > 0).all()):
        raise ValueError(f"spacing is {spacing} Å; give a positive grid step in Å (e.g. 0.25)")
    if not (np.isfinite(padding) and padding >= 0):
        raise ValueError(f"padding is {padding} Å; give a margin of 0 Å or more around the molecule (e.g. 3)")
    low, high = positions.min(0) - padding, positions.max(0) + padding
    shape = tuple(int(n) for n in np.ceil((high - low) / step - 1e-6).astype(int) + 1)
    n_points = int(np.prod(shape))
    if n_points > MAX_GRID_POINTS:
        fits = float(np.max(step) * (n_points / MAX_GRID_POINTS) ** (1 / 3))
        raise ValueError(f"the grid would have {shape[0]} × {shape[1]} × {shape[2]} = {n_points:,} points, more "
                         f"than {MAX_GRID_POINTS:,}; use a spacing of at least {fits:.2g} Å or less padding")
    origin = 0.5 * (low + high) - 0.5 * step * (np.array(shape) - 1)
    return origin, step, shape


def check_inputs(potential, positions, species, probe: int | str, *,
                 spacing: float | tuple[float, float, float] = 0.25, padding: float = 3.0, cell=None) -> int:
    """The host-side checks of :func:`local_chemical_potential`, cheap enough to run before anything
    else (a command runs them before it touches its output folder).

    Returns:
        The probe's atomic number.
    Raises:
        ValueError: as :func:`local_chemical_potential`, except for the checks of the computed Φ
            and of close atoms (done when the molecule's graph is built).
    """
    potential.check_energy_target("the local chemical potential")
    if cell is not None:
        raise ValueError("the frame is periodic (it has a cell), but the local chemical potential is defined for "
                         "a molecule in free space; give a free-space frame (no cell)")
    z_probe = probe_number(probe)
    if z_probe not in potential.config.species:
        raise ValueError(f"the probe species {z_probe} ({species_label((z_probe,))}) is not one the model was trained "
                         f"on (known: {', '.join(map(str, potential.config.species))}); choose one of those")
    positions = np.asarray(positions, np.float64)
    if positions.ndim != 2 or positions.shape[-1] != 3 or len(positions) != len(np.asarray(species)):
        raise ValueError(f"positions have shape {positions.shape} for {len(np.asarray(species))} species; give one "
                         "molecule as (n_atoms, 3) Å with one species per atom")
    potential.check_species(species)
    _grid(positions, spacing, padding)
    return z_probe


def local_chemical_potential(potential, params, positions, species, probe: int | str, *,
                             spacing: float | tuple[float, float, float] = 0.25, padding: float = 3.0,
                             chunk_size: int = 512, cell=None) -> ChemicalPotential:
    """Φ(r) = E_probe(r) − E_probe(isolated) on a grid around a molecule, eV (module docstring).

    The local chemical potential of Schütt et al. 2018 (arXiv:1806.10349): the atomwise energy
    of a probe atom placed at r in the field of the molecule, minus that of the isolated probe.
    The molecule acts on the probe and not the reverse, so Φ → 0 (exactly, to rounding) farther
    than the cutoff from every atom. The molecule's edges are built once on the host
    (:func:`jaxrel.graph.build_graphs`); for each grid point the probe's incoming edges (every
    atom a candidate sender, switched on within the cutoff) are built inside one jitted,
    vmapped function applied to ``chunk_size`` points at a time (one compilation per molecule
    size and chunk size; later calls reuse it).

    Close to an atom the probe overlaps it, far outside any training data: Φ there is the
    model's extrapolation, not chemistry, and can grow large in magnitude (the figures saturate
    their colour scales at the 98th percentile of ``|Φ|``). On an atom it stays finite for the models
    of jaxrel (their distance functions are NaN-safe at r = 0) unless a repulsive prior diverges;
    non-finite values raise instead of being returned. Φ is a difference of two atomwise
    energies that both contain the probe's species shift, so it carries the rounding of the
    model's dtype at that magnitude (float32: ≈ 1e-6 eV for an H probe near −13.6 eV, ≈ 1e-4 eV
    for a probe near −1000 eV). With a prior (:mod:`jaxrel.models.prior`) E_probe holds half of
    each probe–atom pair term, as every atomwise energy does.

    Args:
        potential, params: a :class:`~jaxrel.models.Potential` and its params.
        positions: (n_atoms, 3) float, Å, one molecule.
        species: (n_atoms,) int atomic numbers.
        probe: the probe's atomic number or element symbol (e.g. 1 or "H").
        spacing: grid step, Å: one number, or one per axis (x, y, z).
        padding: margin around the atoms' bounding box, Å; the grid, centred on the box,
            spans at least the box plus ``padding`` on each side.
        chunk_size: grid points evaluated together (memory ∝ chunk_size × (n_edges + n_atoms)
            × n_features); the last chunk is padded to this size.
        cell: the frame's periodic cell, if any; Φ is defined in free space only, so a cell
            raises.

    Returns:
        :class:`ChemicalPotential`, values in float64 (computed in the model's dtype).

    Raises:
        ValueError: a model that does not predict energies (gap, dipole); a cell; a probe or
            molecule species the model was not trained on (the message names it and the known species); an unknown probe symbol; positions that
            are not (n_atoms, 3), non-finite, or atoms closer than 0.1 Å; a non-positive
            spacing or chunk_size, a negative padding, a grid of more than
            :data:`MAX_GRID_POINTS` points; Φ not finite at some grid point (the message
            gives the first such point and its nearest atom).
    """
    start = time.perf_counter()
    z_probe = check_inputs(potential, positions, species, probe, spacing=spacing, padding=padding, cell=cell)
    positions = np.asarray(positions, np.float64)
    species = np.asarray(species, np.int32)
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size is {chunk_size}; give a positive number of grid points")
    origin, step, shape = _grid(positions, spacing, padding)
    dtype = jnp.dtype(potential.config.dtype)
    cutoff = potential.config.cutoff
    molecule = build_graphs(positions, species, cutoff).frame(0).astype(dtype)
    isolated = build_graphs(np.zeros((1, 3)), np.array([z_probe]), cutoff).frame(0).astype(dtype)
    e_isolated = float(_atomwise_energy(potential, params, isolated)[0])

    n_points = int(np.prod(shape))
    axes = [origin[d] + step[d] * np.arange(shape[d]) for d in range(3)]
    z = jnp.asarray(z_probe, jnp.int32)
    chunks = []
    for begin in range(0, n_points, chunk_size):
        index = np.minimum(np.arange(begin, begin + chunk_size), n_points - 1)
        i, j, k = np.unravel_index(index, shape)
        points = np.stack([axes[0][i], axes[1][j], axes[2][k]], axis=-1)
        chunks.append(_probe_energies(potential, params, molecule, z, jnp.asarray(points, dtype)))
    energies = np.concatenate([np.asarray(c, np.float64) for c in chunks])[:n_points]
    values = (energies - e_isolated).reshape(shape)
    bad = ~np.isfinite(values)
    if bad.any():
        point = origin + step * np.argwhere(bad)[0]
        distance, atom = cKDTree(positions).query(point)
        raise ValueError(f"Φ is not finite at {int(bad.sum())} of {n_points} grid points, the first at "
                         f"{np.round(point, 3).tolist()} Å, {distance:.3g} Å from atom {atom} "
                         f"({species_label((int(species[atom]),))}); the model diverges there (a probe on an atom "
                         "with a repulsive prior, or non-finite params): shift the grid off the atoms with another "
                         "spacing or padding, or check the model")
    return ChemicalPotential(origin=origin, spacing=step, values=values, probe=z_probe, positions=positions,
                             species=species, cutoff=float(cutoff), seconds=time.perf_counter() - start)


def write_cube(result: ChemicalPotential, path) -> Path:
    """Write Φ as a Gaussian cube file (through ``ase.io.cube.write_cube``), atomically.

    The file holds the molecule and the grid; ASE converts lengths to Bohr as the format
    requires, and ``ase.io.read`` / ``ase.io.cube.read_cube_data`` give them back in Å. The
    volumetric values are Φ in eV (not atomic units), written with 7 significant digits
    (``%e``); the first comment line says so.

    Returns:
        ``path`` as a Path.
    """
    atoms = ase.Atoms(numbers=result.species, positions=result.positions,
                      cell=np.diag(result.spacing * np.array(result.values.shape)))
    comment = f"jaxrel local chemical potential of a {species_label((result.probe,))} probe, values in eV"
    with tempfile.TemporaryFile("w+") as text:    # ASE writes the values with ndarray.tofile: a real file
        ase_write_cube(text, atoms, data=result.values, origin=result.origin, comment=comment)
        text.seek(0)
        return atomic_write(path, text.read())


def molecular_plane(positions) -> tuple[np.ndarray, np.ndarray]:
    """The plane of a molecule: its centroid and two leading principal axes.

    Args:
        positions: (n_atoms, 3) Å.

    Returns:
        ``(centroid (3,) Å, axes (2, 3))``: orthonormal rows, the directions of largest and
        second-largest spread of the atoms (any orthonormal pair for fewer than 3 atoms).
    """
    positions = np.asarray(positions, np.float64)
    centroid = positions.mean(0)
    _, _, vt = np.linalg.svd(positions - centroid)
    return centroid, vt[:2]


class PlaneSlice(NamedTuple):
    """Φ interpolated on the plane of the molecule (:func:`molecular_plane`).

    Fields::

        a       (na,)      float64 | Å, coordinate along the first principal axis from the centroid
        b       (nb,)      float64 | Å, coordinate along the second principal axis
        values  (nb, na)   float64 | eV, Φ trilinearly interpolated; NaN outside the grid
        atoms   (n_atoms, 2) float64 | Å, the atoms projected onto the plane (a, b)
        height  (n_atoms,) float64 | Å, each atom's signed distance from the plane
    """

    a: np.ndarray
    b: np.ndarray
    values: np.ndarray
    atoms: np.ndarray
    height: np.ndarray


def plane_slice(result: ChemicalPotential, step: float | None = None) -> PlaneSlice:
    """Φ on the plane through the centroid spanned by the two leading principal axes of the atoms.

    The plane covers the atoms' projections plus the grid's padding margin (the smallest
    distance from an atom to the grid's edge); Φ is interpolated trilinearly from the grid
    (``scipy.ndimage.map_coordinates``, order 1) and is NaN where the plane leaves the grid.

    Args:
        result: :func:`local_chemical_potential` output.
        step: sample spacing on the plane, Å (default: half the smallest grid step).
    """
    centroid, axes = molecular_plane(result.positions)
    relative = result.positions - centroid
    atoms = relative @ axes.T
    height = relative @ np.cross(axes[0], axes[1])
    upper = result.origin + result.spacing * (np.array(result.values.shape) - 1)
    margin = max(0.0, float(min((result.positions - result.origin).min(), (upper - result.positions).min())))
    step = 0.5 * float(result.spacing.min()) if step is None else float(step)
    a = np.arange(atoms[:, 0].min() - margin, atoms[:, 0].max() + margin + 0.5 * step, step)
    b = np.arange(atoms[:, 1].min() - margin, atoms[:, 1].max() + margin + 0.5 * step, step)
    aa, bb = np.meshgrid(a, b)
    points = centroid + aa[..., None] * axes[0] + bb[..., None] * axes[1]
    index = (points - result.origin) / result.spacing
    values = map_coordinates(result.values, np.moveaxis(index, -1, 0), order=1, mode="constant", cval=np.nan)
    return PlaneSlice(a=a, b=b, values=values, atoms=atoms, height=height)


def _colour_limit(values: np.ndarray) -> float:
    """Symmetric colour limit, eV: the 98th percentile of ``|Φ|`` (near-atom extremes saturate)."""
    finite = np.abs(values[np.isfinite(values)])
    return float(np.percentile(finite, 98)) if finite.size and finite.max() > 0 else 1.0


def plot_plane_slice(result: ChemicalPotential, path) -> Path:
    """Φ on the plane of the molecule (:func:`plane_slice`) with the atoms labelled by element.

    Diverging colours centred on Φ = 0 (blue binds the probe, red repels it), symmetric
    limits at the 98th percentile of ``|Φ|`` on the plane (the colour bar is extended beyond
    them), the Φ = 0 contour in grey, atoms at their projections with filled markers for atoms
    within 0.5 Å of the plane.

    Returns:
        ``path`` as a Path.
    """
    cut = plane_slice(result)
    limit = _colour_limit(cut.values)
    fig = Figure(figsize=(6.4, 5.2))
    ax = fig.add_subplot()
    mesh = ax.pcolormesh(cut.a, cut.b, np.ma.masked_invalid(cut.values), cmap="RdBu_r",
                         norm=TwoSlopeNorm(0.0, -limit, limit), shading="nearest")
    if np.nanmin(cut.values) < 0 < np.nanmax(cut.values):
        ax.contour(cut.a, cut.b, cut.values, levels=[0.0], colors="0.4", linewidths=0.8)
    for (a, b), h, z in zip(cut.atoms, cut.height, result.species):
        near = abs(h) < 0.5
        ax.plot(a, b, "o", ms=9, mfc="k" if near else "none", mec="k")
        ax.annotate(species_label((int(z),)), (a, b), xytext=(5, 5), textcoords="offset points", fontsize=9)
    ax.set_aspect("equal")
    ax.set_xlabel("first principal axis (Å)")
    ax.set_ylabel("second principal axis (Å)")
    ax.set_title(f"local chemical potential, {species_label((result.probe,))} probe, plane of the molecule",
                 fontsize=10)
    fig.colorbar(mesh, ax=ax, extend="both", label=f"Φ_{species_label((result.probe,))} (eV)")
    return save_figure(fig, path)


def iso_levels(result: ChemicalPotential) -> tuple[float, ...]:
    """Default iso-values of :func:`plot_isosurfaces`, eV: the 5th percentile of Φ over the grid
    points within the cutoff of some atom (beyond it Φ is 0) when it is negative (where the model
    binds the probe most) and the 95th when it is positive (where it repels it most); one level
    when Φ near the molecule has one sign, the 95th percentile when it has none."""
    distance, _ = cKDTree(result.positions).query(result.points().reshape(-1, 3))
    near = result.values.ravel()[distance < result.cutoff]
    near = near if near.size else result.values.ravel()
    low, high = float(np.percentile(near, 5)), float(np.percentile(near, 95))
    return tuple(v for v, keep in ((low, low < 0), (high, high > 0)) if keep) or (high,)


def iso_shell(values: np.ndarray, level: float) -> np.ndarray:
    """The grid points next to the surface Φ = ``level``: (nx, ny, nz) bool, True at a point with
    Φ > level that has a 6-neighbour with Φ ≤ level (so within one grid step of the surface)."""
    above = values > level
    shell = np.zeros_like(above)
    for axis in range(3):
        low, high = [slice(None)] * 3, [slice(None)] * 3
        low[axis], high[axis] = slice(None, -1), slice(1, None)
        low, high = tuple(low), tuple(high)
        change = above[low] != above[high]
        shell[low] |= change & above[low]
        shell[high] |= change & above[high]
    return shell


def plot_isosurfaces(result: ChemicalPotential, path, *, levels: tuple[float, ...] | None = None,
                     max_points: int = 20_000) -> Path:
    """An isosurface view of Φ without a surface mesher: a 3-D scatter of the grid points next to
    each iso-surface Φ = level (:func:`iso_shell`), coloured by the level (blue below 0, red
    above, each side scaled to its largest level), with the atoms drawn and labelled by element.

    Args:
        result: :func:`local_chemical_potential` output.
        path: PNG to write.
        levels: iso-values, eV (default :func:`iso_levels`: a shell where the model binds the
            probe most and one where it repels it most, where Φ takes that sign).
        max_points: at most this many points are drawn per shell (an evenly strided subset).

    Returns:
        ``path`` as a Path.
    """
    levels = iso_levels(result) if levels is None else tuple(float(v) for v in levels)
    tiny = 1e-9 * max(max(abs(v) for v in levels), 1.0)     # TwoSlopeNorm needs vmin < 0 < vmax
    norm = TwoSlopeNorm(0.0, min(*levels, -tiny), max(*levels, tiny))
    cmap = colormaps["RdBu_r"]
    points = result.points()
    fig = Figure(figsize=(6.8, 5.8))
    ax = fig.add_subplot(projection="3d")
    for level in levels:
        shell = points[iso_shell(result.values, level)]
        shown = shell[::max(1, -(-len(shell) // max_points))]
        ax.scatter(*shown.T, s=3, color=cmap(norm(level)), alpha=0.3, depthshade=False,
                   label=f"Φ = {level:.3g} eV ({len(shell)} grid points)")
    ax.scatter(*result.positions.T, s=90, c="k", depthshade=False)
    for position, z in zip(result.positions, result.species):
        ax.text(*(position + 0.25), species_label((int(z),)), fontsize=9)
    upper = result.origin + result.spacing * (np.array(result.values.shape) - 1)
    for d, name in enumerate("xyz"):
        getattr(ax, f"set_{name}lim")(result.origin[d], upper[d])
        getattr(ax, f"set_{name}label")(f"{name} (Å)")
    ax.set_box_aspect(upper - result.origin)
    ax.legend(fontsize=8, loc="upper left", markerscale=4)
    ax.set_title(f"local chemical potential, {species_label((result.probe,))} probe: iso-surfaces (grid points)",
                 fontsize=10)
    fig.colorbar(ScalarMappable(norm, cmap), ax=ax, shrink=0.6, pad=0.12, ticks=sorted({0.0, *levels}),
                 label=f"iso-value Φ_{species_label((result.probe,))} (eV)")
    return save_figure(fig, path)


FILES = ("chempot.json", "chempot_*.cube", "chempot_*_slice.png", "chempot_*_iso.png")
"""Names (glob patterns) :func:`write_chemical_potential` writes in its folder, for
:func:`jaxrel.files.prepare_output`."""


def write_chemical_potential(result: ChemicalPotential, out, metadata: dict | None = None) -> dict[str, Path]:
    """Write ``chempot_<probe>.cube`` (:func:`write_cube`), ``chempot_<probe>_slice.png``
    (:func:`plot_plane_slice`), ``chempot_<probe>_iso.png`` (:func:`plot_isosurfaces`) and
    ``chempot.json`` (``metadata``, then :meth:`ChemicalPotential.summary`, then the file names)
    into the folder ``out`` (created if needed); ``<probe>`` is the element symbol.

    Returns:
        {"cube" | "slice" | "iso" | "json": path}.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"chempot_{species_label((result.probe,))}"
    paths = {"cube": write_cube(result, out / f"{stem}.cube"),
             "slice": plot_plane_slice(result, out / f"{stem}_slice.png"),
             "iso": plot_isosurfaces(result, out / f"{stem}_iso.png")}
    paths["json"] = write_json(out / "chempot.json", {**(metadata or {}), **result.summary(),
                                                      "files": {k: p.name for k, p in paths.items()}})
    return paths
