"""Padded sparse graphs of atoms with fixed capacities.

A :class:`Graph` holds one frame (or, with a leading frame axis on every array, a
batch of frames of one size class). Capacities (``n_atoms``, ``n_edges``) are fixed so
that ``jax.jit`` compiles once per size class; padded atoms and edges are switched off
by ``node_mask``/``edge_mask`` and change no result.

Neighbour lists come from ``jax_md.partition`` in its sparse format, so the same
graph layout drives JAX-MD simulations.

Fields (shapes for one frame)::

    positions  (n_atoms, 3)  float | Å | atom positions (padded atoms: any finite value)
    species    (n_atoms,)    int32 | atomic number Z (0 for padded atoms)
    senders    (n_edges,)    int32 | atom j a message comes from
    receivers  (n_edges,)    int32 | atom i a message goes to
    node_mask  (n_atoms,)    bool  | True for real atoms
    edge_mask  (n_edges,)    bool  | True for real edges (pairs closer than the cutoff)
    cell       (3, 3) float or None | Å | rows are the periodic cell vectors; None = free space

Edges are directed: every pair within the cutoff appears twice, (i ← j) and (j ← i).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax_md import partition, space

from jaxrel.geometry import check_cell, minimum_image
from jaxrel.nn.functional import safe_norm


class Graph(NamedTuple):
    positions: jax.Array
    species: jax.Array
    senders: jax.Array
    receivers: jax.Array
    node_mask: jax.Array
    edge_mask: jax.Array
    cell: jax.Array | None = None

    @property
    def n_atoms(self) -> int:
        """Atom capacity (padded atoms included)."""
        return self.species.shape[-1]

    @property
    def n_edges(self) -> int:
        """Edge capacity (padded edges included)."""
        return self.senders.shape[-1]

    @property
    def is_batched(self) -> bool:
        """True when every array carries a leading frame axis."""
        return self.positions.ndim == 3

    def astype(self, dtype) -> "Graph":
        """The graph with positions and cell in float ``dtype`` (e.g. the model's)."""
        return self._replace(positions=self.positions.astype(dtype),
                             cell=None if self.cell is None else self.cell.astype(dtype))

    def frame(self, k: int) -> "Graph":
        """Frame ``k`` of a batched graph."""
        return jax.tree.map(lambda x: x[k], self)


def edge_vectors(graph: Graph) -> jax.Array:
    """Vectors r_ij = x_j − x_i from each receiver i to its sender j.

    Periodic graphs use the minimum image convention through fractional
    coordinates (valid when every cell height is at least twice the cutoff, which
    :func:`build_graphs` checks). Differentiable in ``positions``.

    Returns:
        (n_edges, 3) float, Å; padded edges give whatever their (masked) indices give.
    """
    d = graph.positions[graph.senders] - graph.positions[graph.receivers]
    if graph.cell is None:
        return d
    frac = d @ jnp.linalg.inv(graph.cell)
    frac = frac - jnp.round(frac)
    return frac @ graph.cell


def edge_lengths(graph: Graph) -> tuple[jax.Array, jax.Array]:
    """Edge vectors and NaN-safe lengths; padded edges get length 0.

    Returns:
        ``(vectors (n_edges, 3) Å, lengths (n_edges,) Å)``.
    """
    vec = jnp.where(graph.edge_mask[:, None], edge_vectors(graph), 0.0)
    return vec, safe_norm(vec)


@functools.lru_cache(maxsize=16)
def neighbor_list_fn(cutoff: float, cell: tuple | None = None, capacity_multiplier: float = 1.25,
                     dtype: str | None = None, cell_list: bool = False):
    """``(shift_fn, neighbor_fn)``: JAX MD free or periodic space and a sparse neighbour list.

    One function serves graph building, MD and the ASE calculator; it is cached per
    argument set, so repeated calls reuse the functions and their compilations. Periodic
    positions stay Cartesian and unwrapped (``periodic_general`` with
    ``fractional_coordinates=False, wrapped=False``), as :func:`edge_vectors` expects;
    JAX MD's box columns are the cell vectors, so the box is the cell transposed.

    The list holds every pair closer than ``cutoff`` (JAX MD's ``d² < cutoff²``), found by an
    O(n²) search over all pairs, or, with ``cell_list``, by JAX MD's cell list (Allen &
    Tildesley, *Computer Simulation of Liquids*, 1987, §5.3.2): the box is cut into cells at
    least ``cutoff`` wide and each atom's pairs are searched in its own and the 26 adjacent
    cells, O(n). JAX MD builds the cell list only for a box of at least 3 cells per side
    (each side longer than 3 × ``cutoff``) and otherwise falls back to the O(n²) search. With
    Cartesian (not fractional) positions its cells are axis-aligned, so ``cell_list`` needs
    an orthorhombic (diagonal) cell, and the positions given to ``allocate``/``update``
    must lie in the box, ``0 ≤ x_a < L_a`` (wrap them: ``positions mod diag(cell)``; the
    list's indices are the same for wrapped and unwrapped positions). A free-space list
    needs no box.

    Args:
        cutoff: Å, the list's radius (a model's cutoff, plus a Verlet skin for lists that are
            not rebuilt at every step).
        cell: the periodic cell as a tuple of three row tuples (Å), or None.
        capacity_multiplier: JAX MD's edge-capacity headroom at allocation (≥ 1); with a cell
            list also the headroom of the atoms per cell.
        dtype: float dtype name of the box (None: JAX's default float).
        cell_list: search pairs with a cell list (see above).

    Raises:
        ValueError: ``cell_list`` without a cell, or with a cell that is not diagonal.
    """
    if cell is None and cell_list:
        raise ValueError("a cell list needs a periodic cell; free-space systems use the O(n²) search "
                         "(pass cell_list=False)")
    displacement, shift, box = _space(cell, dtype)
    if cell_list:
        matrix = np.asarray(cell, np.float64)
        if not np.array_equal(np.diag(np.diag(matrix)), matrix):
            raise ValueError(f"a cell list needs an orthorhombic (diagonal) cell, got {cell}; pass "
                             "cell_list=False for this cell")
        box = jnp.asarray(np.diag(matrix), dtype)   # JAX MD's cells are axis-aligned: the side lengths
    neighbor_fn = partition.neighbor_list(
        displacement, box, r_cutoff=cutoff, capacity_multiplier=capacity_multiplier,
        disable_cell_list=not cell_list, format=partition.NeighborListFormat.Sparse)
    return shift, neighbor_fn


@functools.lru_cache(maxsize=16)
def _space(cell: tuple | None, dtype: str | None):
    """``(displacement_fn, shift_fn, box)`` of JAX MD's free or periodic space, one per cell
    and dtype, so that every neighbour list of a cell shares them (and compiled code that
    takes ``shift_fn`` as a static argument)."""
    if cell is None:
        return (*space.free(), 1.0)
    box = jnp.asarray(cell, dtype).T
    return (*space.periodic_general(box, fractional_coordinates=False, wrapped=False), box)


def cell_key(cell) -> tuple | None:
    """A hashable (3 × 3 tuple) form of a cell for :func:`neighbor_list_fn`; None stays None."""
    return None if cell is None else tuple(map(tuple, np.asarray(cell, np.float64).tolist()))


def graph_from_neighbors(positions: jax.Array, species: jax.Array, idx: jax.Array,
                         cell: jax.Array | None = None, cutoff: float | None = None) -> Graph:
    """One frame's :class:`Graph` from a JAX MD sparse neighbour index (jit-safe).

    Args:
        positions: (n_atoms, 3) Å.
        species: (n_atoms,) int atomic numbers.
        idx: (2, capacity) int, ``neighbor.idx``: receivers = idx[0], senders = idx[1];
            padding entries hold n_atoms and become masked edges.
        cell: (3, 3) Å rows, or None.
        cutoff: Å, or None. Given, edges of (minimum-image) length ``r ≥ cutoff`` are masked
            too, so a list built with a larger radius (a Verlet skin, :mod:`jaxrel.md`) gives
            the graph of the pairs within ``cutoff`` only: the same edges as a list of radius
            ``cutoff``, in the same order.
    """
    n_atoms = species.shape[0]
    edge_mask = idx[0] < n_atoms
    graph = Graph(positions=positions, species=species, senders=jnp.where(edge_mask, idx[1], 0),
                  receivers=jnp.where(edge_mask, idx[0], 0), node_mask=jnp.ones(n_atoms, bool),
                  edge_mask=edge_mask, cell=cell)
    if cutoff is None:
        return graph
    length_sq = jnp.sum(edge_vectors(graph) ** 2, axis=-1)
    return graph._replace(edge_mask=edge_mask & (length_sq < cutoff ** 2))


def check_positions(positions: np.ndarray, species: np.ndarray | None = None,
                    min_distance: float | None = 0.1, cell: np.ndarray | None = None) -> None:
    """Raise ``ValueError`` for non-finite positions or atoms closer than ``min_distance`` Å.

    Args:
        positions: (n_frames, n_atoms, 3) or (n_atoms, 3), Å.
        species: (n_atoms,) int atomic numbers, checked to match the atom count; or None.
        min_distance: smallest physically sensible interatomic distance, Å; None skips it.
        cell: (3, 3) Å periodic cell (rows) or None; distances use the minimum image.
    """
    pos = np.asarray(positions, dtype=np.float64)
    if pos.ndim == 2:
        pos = pos[None]
    bad = ~np.isfinite(pos).all(axis=-1)
    if bad.any():
        f, a = np.argwhere(bad)[0]
        raise ValueError(f"frame {f}, atom {a} has a non-finite position {pos[f, a].tolist()}; "
                         "remove the frame or fix the coordinates")
    if species is not None and np.asarray(species).shape[-1] != pos.shape[1]:
        raise ValueError(f"species has {np.asarray(species).shape[-1]} entries but positions "
                         f"have {pos.shape[1]} atoms; give one species per atom")
    if min_distance is None or pos.shape[1] < 2:
        return
    iu = np.triu_indices(pos.shape[1], k=1)
    for f in range(pos.shape[0]):
        r = np.linalg.norm(minimum_image(pos[f][iu[1]] - pos[f][iu[0]], cell), axis=-1)
        k = int(np.argmin(r))
        if r[k] < min_distance:
            raise ValueError(f"frame {f}: atoms {iu[0][k]} and {iu[1][k]} are {r[k]:.3g} Å apart, "
                             f"closer than {min_distance} Å; check the coordinates' units (Å) "
                             "or remove the frame")


def build_graphs(positions: np.ndarray, species: np.ndarray, cutoff: float,
                 cell: np.ndarray | None = None, n_atoms: int | None = None,
                 n_edges: int | None = None, min_distance: float | None = 0.1) -> Graph:
    """Build a batched padded graph for frames of one system with jax_md neighbour lists.

    Args:
        positions: (n_frames, n_real, 3) or (n_real, 3) float, Å.
        species: (n_real,) int atomic numbers (one composition for all frames).
        cutoff: neighbour cutoff, Å (> 0).
        cell: (3, 3) float periodic cell, rows are cell vectors, Å; None for free space.
            May also be (n_frames, 3, 3) for a cell per frame.
        n_atoms: atom capacity ≥ n_real (padding), default n_real.
        n_edges: edge capacity; default the largest edge count over the frames.
        min_distance: atoms closer than this (Å) raise; None disables the check.

    Returns:
        A :class:`Graph` with a leading frame axis on every array (cell included).

    Raises:
        ValueError: non-finite positions, atoms closer than ``min_distance``, a cell
            rejected by :func:`jaxrel.geometry.check_cell` (e.g. narrower than twice the
            cutoff), capacities smaller than needed (the
            message gives the size that fits), or a non-positive cutoff.
    """
    pos = np.asarray(positions, dtype=np.float64)
    if pos.ndim == 2:
        pos = pos[None]
    species = np.asarray(species, dtype=np.int32)
    n_frames, n_real, _ = pos.shape
    if cutoff <= 0:
        raise ValueError(f"cutoff must be positive, got {cutoff} Å")
    if n_frames == 0:
        raise ValueError("no frames given: positions has shape " + str(pos.shape))
    cells = None
    if cell is not None:
        cells = check_cell(cell, cutoff, per_frame=True)
        cells = np.broadcast_to(cells, (n_frames, 3, 3)) if cells.ndim == 2 else cells
    for f in range(n_frames):
        check_positions(pos[f], species, min_distance, None if cells is None else cells[f])
    n_atoms = n_real if n_atoms is None else n_atoms
    if n_atoms < n_real:
        raise ValueError(f"n_atoms={n_atoms} is smaller than the {n_real} atoms of the frames")

    senders, receivers = _pairs(pos, cutoff, cells)
    counts = [len(s) for s in senders]
    need = max(counts) if counts else 0
    if n_edges is None:
        n_edges = max(need, 1)
    elif need > n_edges:
        f = int(np.argmax(counts))
        raise ValueError(f"frame {f} has {need} directed edges within the {cutoff} Å cutoff but the "
                         f"graph holds n_edges={n_edges}; pass n_edges >= {need} or leave it unset")

    P = np.zeros((n_frames, n_atoms, 3))
    P[:, :n_real] = pos
    Z = np.zeros((n_frames, n_atoms), np.int32)
    Z[:, :n_real] = species
    node_mask = np.zeros((n_frames, n_atoms), bool)
    node_mask[:, :n_real] = True
    S = np.zeros((n_frames, n_edges), np.int32)
    R = np.zeros((n_frames, n_edges), np.int32)
    E = np.zeros((n_frames, n_edges), bool)
    for f in range(n_frames):
        k = counts[f]
        S[f, :k], R[f, :k], E[f, :k] = senders[f], receivers[f], True
    return Graph(positions=jnp.asarray(P), species=jnp.asarray(Z), senders=jnp.asarray(S),
                 receivers=jnp.asarray(R), node_mask=jnp.asarray(node_mask),
                 edge_mask=jnp.asarray(E), cell=None if cells is None else jnp.asarray(cells))


def _pairs(pos: np.ndarray, cutoff: float, cells: np.ndarray | None):
    """Directed neighbour pairs per frame from jax_md sparse lists (vmapped update).

    The list is allocated on the first frame and updated for all frames in one vmapped
    call; on overflow jax_md cannot reallocate inside vmap, so we reallocate on the
    frame that overflowed (outside the transformation) and redo the batch.
    """
    n_frames, n_real, _ = pos.shape
    if cells is not None and not np.allclose(cells, cells[0]):  # one neighbour function per cell
        per_frame = [_pairs(pos[f:f + 1], cutoff, cells[f:f + 1]) for f in range(n_frames)]
        return [p[0][0] for p in per_frame], [p[1][0] for p in per_frame]
    _, nf = neighbor_list_fn(cutoff, cell_key(None if cells is None else cells[0]))
    nbr = nf.allocate(jnp.asarray(pos[0]))
    while True:
        batch = jax.vmap(nbr.update)(jnp.asarray(pos))
        over = np.asarray(batch.did_buffer_overflow)
        if not over.any():
            break
        nbr = nf.allocate(jnp.asarray(pos[int(np.argmax(over))]), extra_capacity=nbr.idx.shape[-1])
    idx = np.asarray(batch.idx)
    senders, receivers = [], []
    for f in range(n_frames):
        keep = idx[f, 0] < n_real
        senders.append(idx[f, 1][keep])
        receivers.append(idx[f, 0][keep])
    return senders, receivers


def pad_graph(graph: Graph, n_atoms: int, n_edges: int) -> Graph:
    """Grow a graph's capacities with masked padding (works on batched graphs too).

    Raises:
        ValueError: if a requested capacity is smaller than the current one.
    """
    if n_atoms < graph.n_atoms or n_edges < graph.n_edges:
        raise ValueError(f"cannot shrink a graph from ({graph.n_atoms} atoms, {graph.n_edges} edges) "
                         f"to ({n_atoms}, {n_edges}); capacities only grow")
    lead = graph.positions.shape[:-2]
    da, de = n_atoms - graph.n_atoms, n_edges - graph.n_edges

    def grow(x, d, value=0):
        pad = [(0, 0)] * len(lead) + [(0, d)] + [(0, 0)] * (x.ndim - len(lead) - 1)
        return jnp.pad(x, pad, constant_values=value)

    return graph._replace(
        positions=grow(graph.positions, da), species=grow(graph.species, da),
        node_mask=grow(graph.node_mask, da, False), senders=grow(graph.senders, de),
        receivers=grow(graph.receivers, de), edge_mask=grow(graph.edge_mask, de, False))


def concatenate_graphs(graphs: list[Graph]) -> Graph:
    """Batched graphs of different sizes as one batch: each padded to the largest atom and edge
    capacity (:func:`pad_graph`), then the frames concatenated in list order.

    Frames of different molecules then share one size class, so one compiled function serves
    them all; padding changes no result.

    Raises:
        ValueError: an empty list, an unbatched graph, or periodic and free-space graphs mixed.
    """
    if not graphs:
        raise ValueError("no graphs given: pass at least one batched Graph")
    if not all(g.is_batched for g in graphs):
        raise ValueError("concatenate_graphs takes batched graphs (a leading frame axis), as build_graphs returns")
    if len({g.cell is None for g in graphs}) > 1:
        raise ValueError("some graphs are periodic and some are not; concatenate graphs of one kind")
    n_atoms, n_edges = max(g.n_atoms for g in graphs), max(g.n_edges for g in graphs)
    return jax.tree.map(lambda *x: jnp.concatenate(x), *[pad_graph(g, n_atoms, n_edges) for g in graphs])
