"""Relevant walks (GNN-LRP) of one frame.

A walk W = (i_0, i_1, …, i_T) visits one atom per layer: i_0 is the atom whose input
features h⁽⁰⁾ carry the relevance, i_T the atom whose readout receives it, and each step
i_{t−1} → i_t is a self-step or follows an edge with sender i_{t−1} and receiver i_t
(layers are residual). Its relevance R_W is the gradient × input of the rule-substituted
network with one-hot masks m_t = e_{i_t} (Schnake et al., TPAMI 2022, arXiv:2006.03589).
Every walk's relevance comes from one chain of per-step Jacobian blocks
(:mod:`jaxrel.relevance.chain`); enumeration, look-up and the top-k walks read the same blocks.
"""

from __future__ import annotations

import numpy as np

from jaxrel.graph import Graph
from jaxrel.nn import RuleSet, resolve_rules
from jaxrel.relevance.chain import chain_relevance, chain_topology, walk_keys


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

    The walks of the walk chain (:func:`jaxrel.relevance.chain.chain_topology`), sorted.

    Returns:
        (n_walks, T + 1) int32, sorted lexicographically. The count is Σ over real
        atoms of the number of T-step paths (N (d + 1)^T on a d-regular graph).
    """
    _require_single_frame(graph)
    atoms = chain_topology(graph, n_interactions)[1].atoms
    return atoms[np.argsort(walk_keys(atoms, graph.n_atoms))]


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


def all_walk_relevances(potential, params, graph: Graph, rules: RuleSet | str = "gi",
                        chunk_size: int | None = 256) -> tuple[np.ndarray, np.ndarray]:
    """Every walk of the frame with its relevance, from one chain of per-step Jacobian blocks
    (:func:`jaxrel.relevance.chain.chain_relevance`).

    Args:
        potential, params: the model.
        graph: one frame.
        rules: rule set or its name (default ``"gi"``).
        chunk_size: walk steps per chunk of the block product (bounds memory); None = all.

    Returns:
        ``(walks (n_walks, T + 1) int32, relevance (n_walks,) float64 eV)``, walks in the
        chain's order (by meet step, then prefix, then suffix; sort with
        :func:`~jaxrel.relevance.chain.walk_keys` for lexicographic order).
    Raises:
        ValueError: a batched graph.
    """
    _require_single_frame(graph)
    topology, every = chain_topology(graph, potential.config.n_interactions)
    blocks, _, _ = chain_relevance(potential, params, graph, topology, resolve_rules(rules), chunk_size)
    return every.atoms, np.asarray(blocks, np.float64).ravel()[every.flat]


def walk_relevance(potential, params, graph: Graph, walks: np.ndarray,
                   rules: RuleSet | str = "gi", chunk_size: int | None = 256) -> np.ndarray:
    """Relevance R_W (eV) of each given walk, looked up among :func:`all_walk_relevances`.

    Args:
        potential, params: the model.
        graph: one frame.
        walks: (n_walks, T + 1) int atom indices (see :func:`enumerate_walks`).
        rules: rule set or its name (default ``"gi"``).
        chunk_size: walk steps per chunk of the block product (bounds memory); None = all.

    Returns:
        (n_walks,) float64, eV.

    Raises:
        ValueError: walks of the wrong length, or steps that are not self-steps or edges.
    """
    walks = np.asarray(walks)
    _check_walks(graph, walks, potential.config.n_interactions)
    if len(walks) == 0:
        return np.zeros(0)
    every, relevance = all_walk_relevances(potential, params, graph, rules, chunk_size)
    keys = walk_keys(every, graph.n_atoms)
    order = np.argsort(keys)
    return relevance[order[np.searchsorted(keys[order], walk_keys(walks, graph.n_atoms))]]


def top_k_walks(potential, params, graph: Graph, k: int, rules: RuleSet | str = "gi",
                chunk_size: int | None = 256, return_stats: bool = False):
    """The k walks with the largest ``|R_W|``, exactly.

    Every walk's relevance comes from the walk chain (the blocks :func:`walk_relevance` and
    :func:`enumerate_walks` use, :mod:`jaxrel.relevance.chain`), then a partial sort; ties in
    ``|R|`` are broken by the walks' lexicographic order.

    Args:
        potential, params: the model.
        graph: one frame.
        k: number of walks.
        rules: rule set or its name (default ``"gi"``).
        chunk_size: walk steps per chunk of the block product (bounds memory); None = all.
        return_stats: also return ``{"walks_scored", "walks_total"}``.

    Returns:
        ``(walks (k, T + 1) int32, relevance (k,) eV)`` sorted by ``|R|`` descending (fewer
        rows if the frame has fewer walks), plus the stats dict if ``return_stats``.
    Raises:
        ValueError: k < 1, or a batched graph.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    atoms, relevance = all_walk_relevances(potential, params, graph, rules, chunk_size)
    k = min(k, len(relevance))
    candidates = np.argpartition(-np.abs(relevance), k - 1)[:k] if k < len(relevance) else np.arange(k)
    keys = walk_keys(atoms[candidates], graph.n_atoms)
    best = candidates[np.lexsort((keys, -np.abs(relevance[candidates])))]
    stats = {"walks_scored": int(len(relevance)), "walks_total": int(len(relevance))}
    walks, relevance = atoms[best].astype(np.int32), relevance[best]
    return (walks, relevance, stats) if return_stats else (walks, relevance)


def _require_single_frame(graph: Graph) -> None:
    if graph.is_batched:
        raise ValueError("relevance works on one frame at a time: pass graph.frame(k), "
                         "or use jaxrel.explain for many frames")


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
