"""Subgraph relevance and the exact n-body decomposition of one or many frames.

The exact n-body term of a set S is the summed relevance of the walks whose set of
distinct atoms is exactly S (Schnake et al., TPAMI 2022, arXiv:2006.03589). Walks follow
edges, so that set is always connected. :func:`nbody_decomposition` gets every walk's
relevance from the walk chain (:mod:`jaxrel.relevance.chain`, per-step Jacobian blocks)
and sums the walks of each set: a segment sum, no Möbius inversion.
:func:`nbody_decompositions` does the same for many frames in one vmapped call spread
over devices.

Subgraph relevance R(S) = Σ of the relevances of all walks that stay inside S comes from
one masked backward pass with indicator masks m_t = 1_S (Xiong et al., "Efficient
computation of higher-order subgraph attribution via message passing", ICML 2022);
:func:`subset_relevance` packs non-interacting sets into shared passes. By Möbius
inversion over connected subsets,

    R_n(S) = R(S) − Σ_{T ⊊ S, T connected} R_|T|(T),

so R_1(i) = R({i}), R_2(i, j) = R({i, j}) − R_1(i) − R_1(j), and so on
(:func:`mobius_inversion`): the independent route the walk chain is tested against.
"""

from __future__ import annotations

import itertools
from functools import partial
import time
from dataclasses import dataclass

import jax
import numpy as np
from tqdm.auto import tqdm

from jaxrel.graph import Graph
from jaxrel.nn import RuleSet, resolve_rules
from jaxrel.relevance.backward import masked_relevance, padded_layer_sets
from jaxrel.parallel import batch_mesh, gather, pad_leading, padded_size, replicate, shard_leading
from jaxrel.relevance.chain import ChainTopology, chain_relevance, chain_topology, stack_topologies, walk_keys, walk_sets
from jaxrel.relevance.table import Table
from jaxrel.relevance.walks import _require_single_frame


def pack_subsets(graph: Graph, subsets: np.ndarray, max_per_pass: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Group atom sets so that sets sharing one masked backward pass cannot interact.

    Two sets may share a pass when they are disjoint and no edge joins them: the masked
    cotangent of each then never reaches the other's atoms, so one backward pass with
    the union mask returns every set's relevance on its own atoms (the backward pass is
    linear in the cotangent). Greedy first fit, larger sets first, in a fixed
    pseudo-random order within each size (denser packing than spatial order).

    Args:
        subsets: (n, k) int atom sets, −1 = unused slot.
        max_per_pass: most sets in one pass.

    Returns:
        ``(passes (n_passes, max_per_pass · k) int32 with −1 padding, pass_of (n,) int)``.
    """
    n_atoms = graph.n_atoms
    closed = np.eye(n_atoms, dtype=bool)
    edge_mask = np.asarray(graph.edge_mask)
    closed[np.asarray(graph.senders)[edge_mask], np.asarray(graph.receivers)[edge_mask]] = True
    closed |= closed.T
    k = subsets.shape[1]
    blocked = np.zeros((0, n_atoms), bool)
    count = np.zeros(0, int)
    members: list[list[int]] = []
    pass_of = np.zeros(len(subsets), int)
    sizes = (subsets >= 0).sum(axis=1)
    shuffled = np.random.default_rng(0).permutation(len(subsets))
    for row in shuffled[np.argsort(-sizes[shuffled], kind="stable")]:
        atoms = subsets[row][subsets[row] >= 0]
        free = ~blocked[:, atoms].any(axis=1) & (count < max_per_pass)
        p = int(np.argmax(free)) if free.any() else len(members)
        if p == len(members):
            blocked = np.vstack([blocked, np.zeros((1, n_atoms), bool)])
            count = np.append(count, 0)
            members.append([])
        blocked[p] |= closed[atoms].any(axis=0)
        count[p] += 1
        members[p].extend(atoms.tolist())
        pass_of[row] = p
    passes = np.full((len(members), max_per_pass * k), -1, np.int32)
    for p, atoms in enumerate(members):
        passes[p, :len(atoms)] = atoms
    return passes, pass_of


def _subset_relevance(potential, params, graph: Graph, subsets: np.ndarray, rules: RuleSet,
                      chunk_size: int | None):
    """Packed masked passes → R(S) (n,) eV."""
    T = potential.config.n_interactions
    passes, pass_of = pack_subsets(graph, subsets)
    layer_sets = np.repeat(passes[:, None, :], T + 1, axis=1)
    relevance, _, _ = masked_relevance(potential, params, graph, padded_layer_sets(layer_sets),
                                       rules, all_start=False, chunk_size=chunk_size)
    relevance = np.asarray(relevance, np.float64)
    rows = np.repeat(pass_of[:, None], subsets.shape[1], axis=1)
    values = np.where(subsets >= 0, relevance[rows, np.maximum(subsets, 0)], 0.0).sum(-1)
    return values


def subset_relevance(potential, params, graph: Graph, subsets: np.ndarray,
                     rules: RuleSet | str = "gi", chunk_size: int | None = 256) -> np.ndarray:
    """R(S) (eV) for each atom set S: the summed relevance of all walks inside S.

    Args:
        graph: one frame.
        subsets: (n_subsets, k) int atom indices, −1 marks an unused slot.
        rules: rule set or its name.
        chunk_size: subsets per vmapped backward chunk (bounds memory); None = all.

    Returns:
        (n_subsets,) float64, eV.
    Raises:
        ValueError: a batched graph, or atom indices outside the frame's real atoms.
    """
    _require_single_frame(graph)
    subsets = np.asarray(subsets, np.int32)
    if subsets.ndim != 2:
        raise ValueError(f"subsets must be (n_subsets, k) with −1 padding, got shape {subsets.shape}")
    real = np.asarray(graph.node_mask)
    used = subsets[subsets >= 0]
    if len(used) and (used.max() >= graph.n_atoms or not real[used].all()):
        bad = used[(used >= graph.n_atoms) | ~real[np.minimum(used, graph.n_atoms - 1)]][0]
        raise ValueError(f"subset atom {bad} is not a real atom of the frame "
                         f"({int(real.sum())} atoms)")
    if len(subsets) == 0:
        return np.zeros(0)
    return _subset_relevance(potential, params, graph, subsets, resolve_rules(rules), chunk_size)


def connected_sets(graph: Graph, max_order: int) -> dict[int, np.ndarray]:
    """All connected atom sets of each size 1..max_order (sorted rows, sorted tables).

    A set is connected when its atoms are connected by the graph's edges; sets of size
    n are grown from those of size n − 1 by one neighbour of any member (vectorised).

    Returns:
        {n: (n_sets, n) int32}.
    """
    _require_single_frame(graph)
    n_atoms = graph.n_atoms
    edge_mask = np.asarray(graph.edge_mask)
    adjacency = np.zeros((n_atoms, n_atoms), bool)
    adjacency[np.asarray(graph.senders)[edge_mask], np.asarray(graph.receivers)[edge_mask]] = True
    adjacency |= adjacency.T
    np.fill_diagonal(adjacency, False)
    sets = {1: np.flatnonzero(np.asarray(graph.node_mask)).astype(np.int32)[:, None]}
    for n in range(2, max_order + 1):
        previous = sets[n - 1]
        reach = adjacency[previous].any(axis=1)
        reach[np.arange(len(previous))[:, None], previous] = False
        row, atom = np.nonzero(reach)
        grown = np.sort(np.concatenate([previous[row], atom[:, None].astype(np.int32)], axis=1), axis=1)
        _, first = np.unique(walk_keys(grown, n_atoms), return_index=True)
        sets[n] = grown[first].reshape(-1, n)
    return sets


def mobius_inversion(sets: dict[int, np.ndarray], values: dict[int, np.ndarray],
                     n_atoms: int) -> dict[int, np.ndarray]:
    """Exact n-body terms of a set function by Möbius inversion over connected subsets.

    ε(S) = v(S) − Σ_{T ⊊ S} ε(T), orders 1, 2, … in turn, where subsets T that are not
    listed (not connected) have ε(T) = 0: a set function that is additive over
    disconnected parts (subgraph relevance; an energy of separated clusters) has zero
    terms for them, so this equals the full inclusion–exclusion
    ``ε(S) = Σ_{T ⊆ S} (−1)^{|S|−|T|} v(T)`` (Rota 1964; for energies the many-body
    expansion, Chong et al. 2025, arXiv:2509.14146).

    Args:
        sets: {n: (m_n, n) int} sorted atom sets of each order 1..max, every table sorted
            by rows (as :func:`connected_sets` returns).
        values: {n: (m_n,) or (m_n, n, ...)} v(S) per set, or per atom slot of each set
            (e.g. gradients of v with respect to the set's atoms; a subset's slot values
            are then subtracted from the matching slots).
        n_atoms: atom capacity of the frame (atom indices are below it).

    Returns:
        {n: ε_n} with the shapes of ``values``.
    """
    keys = {n: walk_keys(s, n_atoms) for n, s in sets.items()}
    terms: dict[int, np.ndarray] = {}
    for n in sorted(sets):
        atoms, eps = sets[n], np.array(values[n], np.float64, copy=True)
        per_slot = eps.ndim > 1
        for m in range(1, n):
            if not len(keys.get(m, ())):
                continue
            for columns in itertools.combinations(range(n), m):
                sub = walk_keys(atoms[:, list(columns)], n_atoms)
                where = np.clip(np.searchsorted(keys[m], sub), 0, len(keys[m]) - 1)
                found = keys[m][where] == sub
                inner = terms[m][where]
                if per_slot:
                    eps[:, list(columns)] -= np.where(found.reshape((-1,) + (1,) * (inner.ndim - 1)), inner, 0.0)
                else:
                    eps -= np.where(found, inner, 0.0)
        terms[n] = eps
    return terms


@dataclass
class NBody:
    """Exact n-body decomposition of one frame (eV).

    Attributes:
        orders: {n: Table} for n = 1..max_order.
        energy: the model's energy E.
        total: Σ over all walks = unmasked gradient × input.
        residual: total − Σ of every table (the terms of order > max_order; 0 when
            max_order ≥ T + 1).
        seconds: wall time of the decomposition.
    """

    orders: dict[int, Table]
    energy: float
    total: float
    residual: float
    seconds: float = 0.0


def check_max_order(potential, max_order: int) -> None:
    """ValueError unless 1 ≤ ``max_order`` ≤ T + 1 (walks of T steps visit at most T + 1 atoms)."""
    T = potential.config.n_interactions
    if not 1 <= max_order <= T + 1:
        raise ValueError(f"max_order (--order) must be between 1 and T + 1 = {T + 1} for a model with "
                         f"{T} interactions, got {max_order}")


def nbody_decomposition(potential, params, graph: Graph, max_order: int = 3,
                        rules: RuleSet | str = "gi", chunk_size: int | None = 256,
                        frame: int = 0) -> NBody:
    """Exact 1- to ``max_order``-body relevance terms of one frame.

    Every walk's relevance from the chain of per-step Jacobian blocks
    (:func:`jaxrel.relevance.chain.chain_relevance`, a few forward-pass costs, no per-set
    pass), then the n-body term of each connected set S is the sum over the walks whose
    set of distinct atoms is exactly S (Schnake et al., TPAMI 2022, arXiv:2006.03589): a
    segment sum. Equal to Möbius inversion of the masked subgraph relevances
    (:func:`subset_relevance`, :func:`mobius_inversion`; tested to 1e-10).

    Args:
        graph: one frame.
        max_order: highest body order (1 ≤ max_order ≤ T + 1; walks of T steps visit at
            most T + 1 atoms).
        rules: rule set or its name.
        chunk_size: walk steps per chunk of the block product (bounds memory); None = all at once.
        frame: the frame number written into the tables' ``frame`` column.

    Raises:
        ValueError: max_order outside 1..T + 1, or a batched graph.
    """
    _require_single_frame(graph)
    check_max_order(potential, max_order)
    start = time.perf_counter()
    topology, walks = chain_topology(graph, potential.config.n_interactions)
    # dispatched asynchronously: the host finds each walk's atom set meanwhile
    blocks, energy, total = chain_relevance(potential, params, graph, topology, resolve_rules(rules), chunk_size)
    sets = connected_sets(graph, max_order)
    return _nbody(graph, sets, walks, blocks, energy, total, frame, start)


def _nbody(graph: Graph, sets, walks, blocks, energy, total, frame: int, start: float) -> NBody:
    """The n-body tables of one frame from its walk blocks (:func:`chain_relevance`)."""
    order, row = walk_sets(walks, sets, graph.n_atoms)
    relevance = np.asarray(blocks, np.float64).ravel()[walks.flat]
    exact = {n: np.bincount(row[order == n], relevance[order == n], minlength=len(s)) for n, s in sets.items()}
    energy, total = float(energy), float(total)
    positions, species = np.asarray(graph.positions), np.asarray(graph.species)
    cell = None if graph.cell is None else np.asarray(graph.cell)
    orders = {n: Table.from_terms(s, exact[n], positions, species, cell, frame) for n, s in sets.items()}
    return NBody(orders=orders, energy=energy, total=total,
                 residual=total - sum(float(t.relevance.sum()) for t in orders.values()),
                 seconds=time.perf_counter() - start)


@partial(jax.jit, static_argnames=("potential", "rules", "chunk_size"))
def _batched_chain(potential, params, graphs: Graph, topologies: ChainTopology, rules: RuleSet,
                   chunk_size: int | None):
    return jax.vmap(lambda g, t: chain_relevance(potential, params, g, t, rules, chunk_size))(graphs, topologies)


def nbody_decompositions(potential, params, graph: Graph, max_order: int = 3, rules: RuleSet | str = "gi",
                         chunk_size: int | None = 256, frames=None, mesh=None,
                         frames_per_call: int = 16, progress: bool = False) -> list[NBody]:
    """:func:`nbody_decomposition` of every frame of a batched graph, frames of one size
    class through one compiled, vmapped call, spread over devices.

    The frames' walk topologies are padded to common shapes (:func:`stack_topologies`);
    with several devices the frame axis is split over a one-axis mesh
    (:mod:`jaxrel.parallel`). Results equal the per-frame function to round-off (tested,
    also on forced host devices).

    Args:
        graph: frames of one system or size class (a batched graph).
        max_order, rules, chunk_size: as :func:`nbody_decomposition`.
        frames: (F,) frame numbers written into the tables (default 0 … F − 1).
        mesh: a one-axis device mesh to split the frames over (:func:`jaxrel.parallel.batch_mesh`);
            None = every local device of every process.
        frames_per_call: frames per compiled call per device (bounds memory).
        progress: a progress bar over calls.

    Returns:
        One :class:`NBody` per frame; ``seconds`` is each frame's share of its call's wall time.
    Raises:
        ValueError: max_order outside 1..T + 1, or a graph that is not batched.
    """
    if not graph.is_batched:
        raise ValueError("nbody_decompositions takes a batched graph; use nbody_decomposition for one frame")
    check_max_order(potential, max_order)
    rules = resolve_rules(rules)
    mesh = batch_mesh() if mesh is None else mesh
    n_frames = graph.positions.shape[0]
    frames = np.arange(n_frames) if frames is None else np.asarray(frames)
    per_call = frames_per_call * mesh.size
    results = []
    for begin in tqdm(range(0, n_frames, per_call), desc="n-body decomposition", unit="call", disable=not progress):
        start = time.perf_counter()
        picked = list(range(begin, min(begin + per_call, n_frames)))
        graphs = [graph.frame(k) for k in picked]
        topologies, walks = zip(*(chain_topology(g, potential.config.n_interactions) for g in graphs))
        stacked, walks = stack_topologies(list(topologies), list(walks))
        size = padded_size(len(picked), mesh)
        batch = jax.tree.map(lambda x: x[np.array(picked)], graph)
        inputs = shard_leading(pad_leading((batch, stacked), size), mesh)
        blocks, energy, total = _batched_chain(potential, replicate(params, mesh), *inputs, rules, chunk_size)
        blocks, energy, total = gather((blocks, energy, total))
        share = (time.perf_counter() - start) / len(picked)
        for j, (g, w) in enumerate(zip(graphs, walks)):
            nb = _nbody(g, connected_sets(g, max_order), w, blocks[j], energy[j], total[j], int(frames[picked[j]]),
                        time.perf_counter())
            results.append(NBody(nb.orders, nb.energy, nb.total, nb.residual, share + nb.seconds))
    return results
