"""Subgraph relevance and the exact n-body decomposition of one or many frames.

Subgraph relevance R(S) = Σ of the relevances of all walks that stay inside S, from one
masked backward pass with indicator masks m_t = 1_S (Xiong et al., "Efficient
computation of higher-order subgraph attribution via message passing", ICML 2022).

The exact n-body term of a set S is the summed relevance of the walks whose set of
distinct atoms is exactly S. Walks follow edges, so that set is always connected, and by
Möbius inversion over subsets (Schnake et al. TPAMI 2022, arXiv:2006.03589)

    R_n(S) = R(S) − Σ_{T ⊊ S, T connected} R_|T|(T),

so R_1(i) = R({i}), R_2(i, j) = R({i, j}) − R_1(i) − R_1(j), and so on. Only connected
sets are evaluated: pairs joined by an edge, triplets with two or more edges among them.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from jaxrel.graph import Graph
from jaxrel.relevance.backward import as_rules, masked_relevance, padded_layer_sets
from jaxrel.relevance.rules import RuleSet
from jaxrel.relevance.walks import _require_single_frame, successors


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
    """Packed masked passes → (R(S) (n,) eV, energy eV, Σ gradient × input eV)."""
    T = potential.config.n_interactions
    passes, pass_of = pack_subsets(graph, subsets)
    layer_sets = np.repeat(passes[:, None, :], T + 1, axis=1)
    relevance, energy, gxi = masked_relevance(potential, params, graph, padded_layer_sets(layer_sets),
                                              rules, all_start=False, chunk_size=chunk_size)
    relevance = np.asarray(relevance, np.float64)
    rows = np.repeat(pass_of[:, None], subsets.shape[1], axis=1)
    values = np.where(subsets >= 0, relevance[rows, np.maximum(subsets, 0)], 0.0).sum(-1)
    return values, float(energy), float(np.asarray(gxi, np.float64).sum())


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
    return _subset_relevance(potential, params, graph, subsets, as_rules(rules), chunk_size)[0]


def connected_sets(graph: Graph, max_order: int) -> dict[int, np.ndarray]:
    """All connected atom sets of each size 1..max_order (sorted rows, sorted tables).

    Returns:
        {n: (n_sets, n) int32}.
    """
    succ = successors(graph)
    neighbours = [set(s.tolist()) - {a} for a, s in enumerate(succ)]
    real = np.flatnonzero(np.asarray(graph.node_mask))
    levels = {1: {(int(a),) for a in real}}
    for n in range(2, max_order + 1):
        grown = set()
        for s in levels[n - 1]:
            for a in set().union(*(neighbours[i] for i in s)) - set(s):
                grown.add(tuple(sorted((*s, a))))
        levels[n] = grown
    return {n: np.array(sorted(sets), np.int32).reshape(len(sets), n) for n, sets in levels.items()}


@dataclass
class Table:
    """The n-body terms of one order for one frame.

    atoms: (n_terms, order) int32, sorted ascending; species: (n_terms, order) int32;
    relevance: (n_terms,) float64 eV; distances: (n_terms, order·(order−1)/2) Å, in the
    order (0,1), (0,2), …, (1,2), …; angles: for order 3, (n_terms, 3) degrees, the angle at
    atoms[:, 0], [:, 1], [:, 2] (else None).
    """

    atoms: np.ndarray
    species: np.ndarray
    relevance: np.ndarray
    distances: np.ndarray
    angles: np.ndarray | None = None


@dataclass
class NBody:
    """Exact n-body decomposition of one frame (eV).

    orders: {n: Table} for n = 1..max_order.
    energy: the model's energy E.
    total: Σ over all walks = unmasked gradient × input.
    residual: total − Σ of every table (the terms of order > max_order; 0 when
        max_order ≥ T + 1).
    bias_relevance: energy − total, relevance absorbed by biases, species shifts and
        stabilisers (0 for GI rules with bias-free layers and no shifts).
    seconds: wall time of the decomposition.
    """

    orders: dict[int, Table]
    energy: float
    total: float
    residual: float
    bias_relevance: float
    seconds: float = 0.0
    order_totals: dict[int, float] = field(default_factory=dict)


def nbody_decomposition(potential, params, graph: Graph, max_order: int = 3,
                        rules: RuleSet | str = "gi", chunk_size: int | None = 256) -> NBody:
    """Exact 1- to ``max_order``-body relevance terms of one frame.

    One masked backward pass per group of non-interacting connected sets (see
    :func:`pack_subsets`; vmapped, chunked), then Möbius inversion.

    Args:
        graph: one frame.
        max_order: highest body order (1 ≤ max_order ≤ T + 1; walks of T steps visit at
            most T + 1 atoms).
        rules: rule set or its name.
        chunk_size: masks per vmapped chunk; None = all at once.

    Raises:
        ValueError: max_order outside 1..T + 1, or a batched graph.
    """
    _require_single_frame(graph)
    T = potential.config.n_interactions
    if not 1 <= max_order <= T + 1:
        raise ValueError(f"max_order must be between 1 and T + 1 = {T + 1} for a model with "
                         f"{T} interactions, got {max_order}")
    start = time.perf_counter()
    sets = connected_sets(graph, max_order)
    rows = [np.pad(s, ((0, 0), (0, max_order - n)), constant_values=-1) for n, s in sets.items()]
    subset_r, energy, total = _subset_relevance(potential, params, graph, np.concatenate(rows),
                                                as_rules(rules), chunk_size)
    exact: dict[tuple[int, ...], float] = {}
    offset = 0
    for n, s in sets.items():
        for row, value in zip(map(tuple, s.tolist()), subset_r[offset:offset + len(s)]):
            inner = sum(exact.get(sub, 0.0) for m in range(1, n)
                        for sub in itertools.combinations(row, m))
            exact[row] = value - inner
        offset += len(s)
    species = np.asarray(graph.species)
    vectors = _pair_vectors(graph)
    orders = {}
    for n, s in sets.items():
        values = np.array([exact[tuple(r)] for r in s.tolist()], np.float64)
        orders[n] = _table(s, values, species, vectors)
    order_totals = {n: float(t.relevance.sum()) for n, t in orders.items()}
    return NBody(orders=orders, energy=float(energy), total=total,
                 residual=total - sum(order_totals.values()), bias_relevance=float(energy) - total,
                 seconds=time.perf_counter() - start, order_totals=order_totals)


def nbody_decomposition_frames(potential, params, graph: Graph, max_order: int = 3,
                               rules: RuleSet | str = "gi", chunk_size: int | None = 256,
                               progress: bool = True) -> list[NBody]:
    """:func:`nbody_decomposition` for every frame of a batched graph (one compile per
    size class: mask counts are padded to powers of two)."""
    frames = [graph.frame(k) for k in range(graph.positions.shape[0])] if graph.is_batched else [graph]
    return [nbody_decomposition(potential, params, g, max_order, rules, chunk_size)
            for g in tqdm(frames, desc="n-body decomposition", unit="frame", disable=not progress)]


def _pair_vectors(graph: Graph):
    """A function (i, j) → minimum-image vectors x_j − x_i (Å), vectorised over arrays."""
    positions = np.asarray(graph.positions, np.float64)
    cell = None if graph.cell is None else np.asarray(graph.cell, np.float64)
    inverse = None if cell is None else np.linalg.inv(cell)

    def vector(i, j):
        d = positions[j] - positions[i]
        if cell is None:
            return d
        frac = d @ inverse
        return (frac - np.round(frac)) @ cell

    return vector


def _table(sets, values, species, vector) -> Table:
    n = sets.shape[1]
    pairs = list(itertools.combinations(range(n), 2))
    distances = np.stack([np.linalg.norm(vector(sets[:, a], sets[:, b]), axis=-1) for a, b in pairs],
                         axis=1) if pairs else np.zeros((len(sets), 0))
    angles = None
    if n == 3:
        angles = np.zeros((len(sets), 3))
        for c in range(3):
            u = vector(sets[:, c], sets[:, (c + 1) % 3])
            v = vector(sets[:, c], sets[:, (c + 2) % 3])
            cos = np.sum(u * v, -1) / (np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1))
            angles[:, c] = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
    return Table(atoms=sets, species=species[sets].astype(np.int32), relevance=values,
                 distances=distances, angles=angles)


def save_nbody(results: list[NBody], path, frames: list[int] | None = None,
               extra: dict[str, np.ndarray] | None = None) -> None:
    """Write n-body tables of many frames to one ``.npz``, one table per body order.

    Keys for each order n: ``order{n}_frame`` (m,) frame index, ``order{n}_atoms`` (m, n),
    ``order{n}_species`` (m, n), ``order{n}_relevance`` (m,) eV, ``order{n}_distances``
    (m, n(n−1)/2) Å, and for n = 3 ``order3_angles`` (m, 3) degrees (angle at each atom).
    ``extra`` arrays (e.g. the frames' positions) are stored under their own keys.
    """
    frames = list(range(len(results))) if frames is None else frames
    out = dict(extra or {})
    for n in sorted({n for r in results for n in r.orders}):
        tables = [(f, r.orders[n]) for f, r in zip(frames, results) if n in r.orders]
        out[f"order{n}_frame"] = np.concatenate([np.full(len(t.atoms), f, np.int32) for f, t in tables])
        for key in ("atoms", "species", "relevance", "distances"):
            out[f"order{n}_{key}"] = np.concatenate([getattr(t, key) for _, t in tables])
        if n == 3:
            out["order3_angles"] = np.concatenate([t.angles for _, t in tables])
    np.savez(path, **out)
