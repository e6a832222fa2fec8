"""Relevant walks (GNN-LRP) of one frame.

A walk W = (i_0, i_1, …, i_T) visits one atom per layer: i_0 is the atom whose input
features h⁽⁰⁾ carry the relevance, i_T the atom whose readout receives it, and each step
i_{t−1} → i_t is a self-step or follows an edge with sender i_{t−1} and receiver i_t
(layers are residual). Its relevance R_W is the gradient × input of the rule-substituted
network with one-hot masks m_t = e_{i_t} (Schnake et al., TPAMI 2022, arXiv:2006.03589).
One masked backward pass per walk *suffix* (i_1, …, i_T) gives the relevances of the
walks from every start atom i_0 at once.
"""

from __future__ import annotations

import heapq

import numpy as np

from jaxrel.graph import Graph
from jaxrel.relevance.backward import as_rules, masked_relevance, padded_layer_sets
from jaxrel.relevance.rules import RuleSet


def successors(graph: Graph) -> list[np.ndarray]:
    """For each atom, the atoms a walk can step to: itself and the receivers of its edges.

    Padded atoms get an empty list. One frame only.
    """
    _require_single_frame(graph)
    node_mask = np.asarray(graph.node_mask)
    edge_mask = np.asarray(graph.edge_mask)
    senders = np.asarray(graph.senders)[edge_mask]
    receivers = np.asarray(graph.receivers)[edge_mask]
    out = []
    for a in range(graph.n_atoms):
        out.append(np.unique(np.concatenate([[a], receivers[senders == a]])) if node_mask[a]
                   else np.zeros(0, np.int64))
    return out


def enumerate_walks(graph: Graph, n_interactions: int) -> np.ndarray:
    """Every walk of length T = ``n_interactions`` on the graph with self-loops.

    Returns:
        (n_walks, T + 1) int32, sorted lexicographically. The count is Σ over real
        atoms of the number of T-step paths (N (d + 1)^T on a d-regular graph).
    """
    succ = successors(graph)
    degree = np.array([len(s) for s in succ])
    offsets = np.concatenate([[0], np.cumsum(degree)])
    flat = np.concatenate(succ) if len(succ) else np.zeros(0, np.int64)
    walks = np.flatnonzero(np.asarray(graph.node_mask))[:, None]
    for _ in range(n_interactions):
        last = walks[:, -1]
        counts = degree[last]
        rows = np.repeat(np.arange(len(walks)), counts)
        starts = np.repeat(offsets[last], counts)
        within = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
        walks = np.concatenate([walks[rows], flat[starts + within][:, None]], axis=1)
    return walks.astype(np.int32)


def body_order(walks: np.ndarray) -> np.ndarray:
    """Number of distinct atoms each walk visits: (n_walks,) int (1 … T + 1)."""
    walks = np.sort(np.asarray(walks), axis=1)
    return 1 + (np.diff(walks, axis=1) != 0).sum(axis=1)


def select_walks(walks: np.ndarray, atoms: int | list[int] | None = None,
                 order: int | None = None, start: int | None = None) -> np.ndarray:
    """The walks that visit all of ``atoms``, have body order ``order`` and start at ``start``.

    Args:
        walks: (n_walks, T + 1) int.
        atoms: atom index or indices every selected walk must visit (None: any).
        order: number of distinct atoms (None: any).
        start: required i_0 (None: any).

    Returns:
        The selected rows, (n_selected, T + 1).
    Raises:
        ValueError: the selection is empty (it names the criteria).
    """
    walks = np.asarray(walks)
    keep = np.ones(len(walks), bool)
    for a in np.atleast_1d(atoms) if atoms is not None else []:
        keep &= (walks == a).any(axis=1)
    if order is not None:
        keep &= body_order(walks) == order
    if start is not None:
        keep &= walks[:, 0] == start
    if not keep.any():
        raise ValueError(f"no walk visits atoms {atoms} with body order {order} and start {start}; "
                         "check the atom indices (0-based) and that they are within reach")
    return walks[keep]


def walk_relevance(potential, params, graph: Graph, walks: np.ndarray,
                   rules: RuleSet | str = "gi", chunk_size: int | None = 256) -> np.ndarray:
    """Relevance R_W (eV) of each given walk, one masked backward per distinct suffix.

    Args:
        potential, params: the model.
        graph: one frame.
        walks: (n_walks, T + 1) int atom indices (see :func:`enumerate_walks`).
        rules: rule set or its name (default ``"gi"``).
        chunk_size: suffixes per vmapped backward chunk (bounds memory); None = all.

    Returns:
        (n_walks,) float64, eV.

    Raises:
        ValueError: walks of the wrong length, or steps that are not self-steps or edges.
    """
    walks = np.asarray(walks)
    _check_walks(graph, walks, potential.config.n_interactions)
    if len(walks) == 0:
        return np.zeros(0)
    suffixes, inverse = np.unique(walks[:, 1:], axis=0, return_inverse=True)
    sets = np.concatenate([np.full((len(suffixes), 1), -1), suffixes], axis=1)[:, :, None]
    relevance, _, _ = masked_relevance(potential, params, graph,
                                       padded_layer_sets(sets.astype(np.int32)), as_rules(rules),
                                       all_start=True, chunk_size=chunk_size)
    return np.asarray(relevance, np.float64)[inverse.ravel(), walks[:, 0]]


def top_k_walks(potential, params, graph: Graph, k: int, rules: RuleSet | str = "gi",
                suffixes_per_block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """The k walks with the largest |R_W|, exactly, with memory bounded by the block size.

    The walks are scored block by block of suffixes (all start atoms at once) and only
    a running top-k is kept, so memory does not grow with the number of walks; time does.

    Returns:
        ``(walks (k, T + 1) int32, relevance (k,) eV)`` sorted by |R| descending (fewer
        rows if the frame has fewer walks).
    Raises:
        ValueError: k < 1.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    rules = as_rules(rules)
    T = potential.config.n_interactions
    suffixes = enumerate_walks(graph, T - 1)  # (i_1, …, i_T) are walks of T − 1 steps
    succ = successors(graph)
    heap: list[tuple[float, tuple[int, ...], float]] = []
    for start in range(0, len(suffixes), suffixes_per_block):
        block = suffixes[start:start + suffixes_per_block]
        sets = np.concatenate([np.full((len(block), 1), -1), block], axis=1)[:, :, None]
        relevance = np.asarray(masked_relevance(potential, params, graph,
                                                padded_layer_sets(sets.astype(np.int32)), rules,
                                                all_start=True, chunk_size=256)[0])
        for row, suffix in enumerate(block):
            # start atoms i_0 that can step to i_1 are i_1's neighbours and itself
            for i0 in succ[suffix[0]]:
                r = float(relevance[row, i0])
                item = (abs(r), (int(i0), *map(int, suffix)), r)
                if len(heap) < k:
                    heapq.heappush(heap, item)
                elif item[0] > heap[0][0]:
                    heapq.heapreplace(heap, item)
    best = sorted(heap, key=lambda x: -x[0])
    return (np.array([w for _, w, _ in best], np.int32).reshape(len(best), T + 1),
            np.array([r for _, _, r in best]))


def _require_single_frame(graph: Graph) -> None:
    if graph.is_batched:
        raise ValueError("relevance works on one frame at a time: pass graph.frame(k), "
                         "or use nbody_decomposition_frames for many frames")


def _check_walks(graph: Graph, walks: np.ndarray, n_interactions: int) -> None:
    _require_single_frame(graph)
    if walks.ndim != 2 or walks.shape[1] != n_interactions + 1:
        raise ValueError(f"walks must have shape (n_walks, {n_interactions + 1}) for a model with "
                         f"{n_interactions} interactions, got {walks.shape}")
    if len(walks) == 0:
        return
    succ = successors(graph)
    allowed = {(a, b) for a, s in enumerate(succ) for b in s}
    steps = set(map(tuple, np.stack([walks[:, :-1], walks[:, 1:]], -1).reshape(-1, 2).tolist()))
    bad = steps - allowed
    if bad:
        a, b = sorted(bad)[0]
        raise ValueError(f"a walk steps from atom {a} to atom {b}, which are not joined by an edge "
                         "within the cutoff (or are padding); use enumerate_walks for valid walks")
