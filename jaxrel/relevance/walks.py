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
from functools import partial

import jax
import jax.numpy as jnp
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


def walk_relevance(potential, params, graph: Graph, walks: np.ndarray,
                   rules: RuleSet | str = "gi", chunk_size: int | None = 256) -> np.ndarray:
    """Relevance R_W (eV) of each given walk.

    Every walk of the frame comes from one chain of per-step Jacobian blocks
    (:func:`jaxrel.relevance.chain.chain_relevance`); the given walks are looked up in it.

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
    T = potential.config.n_interactions
    _check_walks(graph, walks, T)
    if len(walks) == 0:
        return np.zeros(0)
    topology, every = chain_topology(graph, T)
    blocks, _, _ = chain_relevance(potential, params, graph, topology, resolve_rules(rules), chunk_size)
    keys = walk_keys(every.atoms, graph.n_atoms)
    order = np.argsort(keys)
    where = order[np.searchsorted(keys[order], walk_keys(walks, graph.n_atoms))]
    return np.asarray(blocks, np.float64).ravel()[every.flat[where]]


def top_k_walks(potential, params, graph: Graph, k: int, rules: RuleSet | str = "gi",
                suffixes_per_block: int = 4096, return_stats: bool = False):
    """The k walks with the largest ``|R_W|``, exactly, by best-first search over walk suffixes.

    Suffixes are grown from the readout down (i_T first, then i_{T−1} ∈ {i_T} ∪ senders
    into i_T, …). A suffix (i_t, …, i_T) carries its cotangent row c at atom i_t; one
    VJP of layer t gives the exact rows of all its one-step extensions, and expanding a
    suffix (i_1, …, i_T) gives the exact R_W of its walks for every start atom i_0.
    A suffix is expanded only while its admissible bound ‖c‖·M_t(i_t) exceeds the k-th
    largest ``|R|`` found, where M_t(j) ≥ ‖J_t ⋯ J_1 h⁽⁰⁾_{i_0}‖ over all lower walks ending
    at j (a max-product dynamic programme over exact spectral norms of the per-edge
    Jacobian blocks of the rule-substituted layers; Xiong et al., ICML 2023). The result
    equals full enumeration (up to the order of ties).

    Args:
        potential, params: the model.
        graph: one frame.
        k: number of walks.
        rules: rule set or its name (default ``"gi"``).
        suffixes_per_block: the most suffixes expanded per vmapped VJP (bounds memory).
        return_stats: also return ``{"walks_scored", "walks_total", "backward_passes",
            "bound_passes"}``: walks whose R_W was computed, walks of the frame, VJPs of
            single suffixes, and linearised layer passes spent on the bounds.

    Returns:
        ``(walks (k, T + 1) int32, relevance (k,) eV)`` sorted by ``|R|`` descending (fewer
        rows if the frame has fewer walks), plus the stats dict if ``return_stats``.
    Raises:
        ValueError: k < 1.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    _require_single_frame(graph)
    rules = resolve_rules(rules)
    T = potential.config.n_interactions
    cap = max(1, min(int(suffixes_per_block), _MAX_BATCH))
    pred_idx, preds, colour = _topology(graph)
    states, top = _forward(potential, params, graph, rules)
    dtype = np.dtype(jax.tree.leaves(top)[0].dtype)
    margin = 1.0 + 1e4 * float(np.finfo(dtype).eps)
    real = np.flatnonzero(np.asarray(graph.node_mask))
    stats = {"walks_scored": 0, "walks_total": _count_walks(preds, real, T),
             "backward_passes": 0, "bound_passes": 0}

    bounds, n_bound_passes = _max_product_bounds(potential, params, graph, rules, states,
                                                 preds, colour, T)
    stats["bound_passes"] = n_bound_passes

    best: list[tuple[float, tuple[int, ...], float]] = []  # min-heap of (|R|, walk, R)

    def threshold() -> float:
        return best[0][0] if len(best) >= k else -np.inf

    # frontier: max-heap of (−bound, tie, level t, suffix (i_t, …, i_T), cotangent row at i_t)
    frontier: list = []
    tie = 0
    top_rows = _gather_rows(top, real)
    for j, row in zip(real, top_rows):
        heapq.heappush(frontier, (-np.inf, tie, T, (int(j),), row))
        tie += 1
    batch = min(cap, 8)  # grows geometrically: small first batches raise the threshold early
    while frontier and -frontier[0][0] > threshold():
        popped = []
        while frontier and len(popped) < batch and -frontier[0][0] > threshold():
            popped.append(heapq.heappop(frontier))
        for level in sorted({p[2] for p in popped}, reverse=True):
            group = [p for p in popped if p[2] == level]
            for start in range(0, len(group), cap):
                part = group[start:start + cap]
                atoms = np.array([p[3][0] for p in part], np.int32)
                rows = np.stack([p[4] for p in part])
                n = len(part)
                size = _size_class(n, cap)
                atoms_p = np.zeros(size, np.int32)
                atoms_p[:n] = atoms
                rows_p = np.zeros((size,) + rows.shape[1:], rows.dtype)
                rows_p[:n] = rows
                out = np.asarray(_expand(potential, params, graph, rules, level,
                                         states[level - 1], jnp.asarray(rows_p),
                                         jnp.asarray(atoms_p), jnp.asarray(pred_idx)))[:n]
                stats["backward_passes"] += n
                if level == 1:
                    for p, r_row in zip(part, out):
                        for slot, i0 in enumerate(preds[p[3][0]]):
                            r = float(r_row[slot])
                            item = (abs(r), (int(i0), *p[3]), r)
                            stats["walks_scored"] += 1
                            if len(best) < k:
                                heapq.heappush(best, item)
                            elif item[0] > best[0][0]:
                                heapq.heapreplace(best, item)
                else:
                    norms = np.sqrt(np.sum(np.square(out.astype(np.float64)), axis=-1))
                    tau = threshold()
                    for p, child_rows, child_norms in zip(part, out, norms):
                        for slot, i in enumerate(preds[p[3][0]]):
                            b = float(child_norms[slot] * bounds[level - 1][i] * margin)
                            if b > tau:
                                heapq.heappush(frontier, (-b, tie, level - 1, (int(i), *p[3]),
                                                          child_rows[slot]))
                                tie += 1
        batch = min(cap, 2 * batch)
    ranked = sorted(best, key=lambda x: -x[0])
    walks = np.array([w for _, w, _ in ranked], np.int32).reshape(len(ranked), T + 1)
    relevance = np.array([r for _, _, r in ranked], np.float64)
    return (walks, relevance, stats) if return_stats else (walks, relevance)


_MAX_BATCH = 256
_JVP_BATCH = 32  # Jacobian columns per vmapped JVP in the top-k bounds


def _size_class(n: int, cap: int) -> int:
    """Padded batch size: a power of two ≥ n (at least 8), at most ``cap``."""
    return min(max(8, 1 << max(0, (n - 1).bit_length())), max(cap, n))


def _topology(graph: Graph):
    """Predecessor lists (self first, then senders into the atom), padded (n_atoms, P)
    with −1, and a colouring of the atoms in which atoms of one colour share no successor."""
    succ = successors(graph)
    n = graph.n_atoms
    preds: list[list[int]] = [[] for _ in range(n)]
    for a, s in enumerate(succ):
        for b in s:
            preds[int(b)].append(a)
    preds_arr = [np.array(sorted(p), np.int64) for p in preds]
    width = max(1, max(len(p) for p in preds_arr))
    pred_idx = np.full((n, width), -1, np.int32)
    for j, p in enumerate(preds_arr):
        pred_idx[j, :len(p)] = p
    colour = np.full(n, -1, np.int64)
    for a in range(n):
        if len(succ[a]) == 0:
            continue
        taken = {int(colour[i]) for j in succ[a] for i in preds_arr[j] if colour[i] >= 0}
        c = 0
        while c in taken:
            c += 1
        colour[a] = c
    return pred_idx, preds_arr, colour


def _count_walks(preds, real, T: int) -> int:
    """Number of walks of T steps (by a DP over predecessor lists)."""
    count = np.zeros(len(preds), np.int64)
    count[real] = 1
    for _ in range(T):
        count = np.array([count[p].sum() if len(p) else 0 for p in preds], np.int64)
    return int(count.sum())


def _gather_rows(tree, atoms) -> np.ndarray:
    """Rows of a state pytree at ``atoms``, flattened over leaves: (len(atoms), D)."""
    atoms = np.asarray(atoms)
    return np.concatenate([np.asarray(leaf)[atoms].reshape(len(atoms), -1)
                           for leaf in jax.tree.leaves(tree)], axis=-1)


def _jnp_rows(tree, atoms: jax.Array) -> jax.Array:
    """Device version of :func:`_gather_rows` for an index array of any shape."""
    return jnp.concatenate([leaf[atoms].reshape(atoms.shape + (-1,))
                            for leaf in jax.tree.leaves(tree)], axis=-1)


def _one_row(template, atom, row):
    """A state pytree shaped like ``template``, zero except ``row`` (flat) at ``atom``."""
    leaves, treedef = jax.tree.flatten(template)
    out, offset = [], 0
    for leaf in leaves:
        size = int(np.prod(leaf.shape[1:], dtype=np.int64))
        part = row[offset:offset + size].reshape(leaf.shape[1:]).astype(leaf.dtype)
        out.append(jnp.zeros_like(leaf).at[atom].set(part))
        offset += size
    return jax.tree.unflatten(treedef, out)


@partial(jax.jit, static_argnames=("potential", "rules"))
def _forward(potential, params, graph: Graph, rules: RuleSet):
    """States h⁽⁰⁾ … h⁽ᵀ⁾ of the rule-substituted forward pass and ∂ΣE_i/∂h⁽ᵀ⁾."""
    h = potential.embedding(params, graph)
    layers, energy_readout = potential.layer_functions(params, graph, rules)
    states = [h]
    for layer in layers:
        h = layer(h)
        states.append(h)
    top = jax.grad(lambda x: energy_readout(x).sum())(h)
    return states, top


@partial(jax.jit, static_argnames=("potential", "rules", "level"))
def _expand(potential, params, graph: Graph, rules: RuleSet, level: int, h_prev, rows, atoms,
            pred_idx):
    """Expand suffixes at ``level`` t: rows (B, D_t) of the cotangent of h⁽ᵗ⁾ at ``atoms``.

    Returns (B, P, D_{t−1}) cotangent rows at each atom's predecessors (t > 1), or the
    walk relevances (B, P) for every start atom i_0 = predecessor (t = 1).
    """
    layers, _ = potential.layer_functions(params, graph, rules)
    h_out, vjp = jax.vjp(layers[level - 1], h_prev)
    idx = jnp.maximum(pred_idx[atoms], 0)  # (B, P); padding slots are never read

    def one(atom, row, where):
        full = vjp(_one_row(h_out, atom, row))[0]
        if level == 1:
            return jnp.sum(h_prev[where] * full[where], axis=-1)
        return _jnp_rows(full, where)

    return jax.vmap(one)(atoms, rows, idx)


@partial(jax.jit, static_argnames=("potential", "rules", "level"))
def _layer_one_products(potential, params, graph: Graph, rules: RuleSet, level: int, h_prev,
                        colour_masks):
    """‖J_1(j←i) h⁽⁰⁾_i‖ for the (unique) input atom i of each colour feeding output j: (C, N)."""
    layers, _ = potential.layer_functions(params, graph, rules)
    _, lin = jax.linearize(layers[level - 1], h_prev)

    def one(mask):
        out = lin(h_prev * mask[:, None])
        return jnp.sqrt(sum(jnp.sum(jnp.square(leaf.reshape(leaf.shape[0], -1)), axis=-1)
                            for leaf in jax.tree.leaves(out)))

    return jax.lax.map(one, colour_masks)


@partial(jax.jit, static_argnames=("potential", "rules", "level"))
def _layer_block_norms(potential, params, graph: Graph, rules: RuleSet, level: int, h_prev,
                       colour_masks):
    """Spectral norms ‖J_t(j←i)‖₂ of the per-edge Jacobian blocks, (C, N): for colour c and
    output atom j, the block from the (unique) input atom i of colour c feeding j."""
    layers, _ = potential.layer_functions(params, graph, rules)
    _, lin = jax.linearize(layers[level - 1], h_prev)
    leaves, treedef = jax.tree.flatten(h_prev)
    sizes = [int(np.prod(leaf.shape[1:], dtype=np.int64)) for leaf in leaves]
    d_in = sum(sizes)
    n = leaves[0].shape[0]

    def tangent(mask, f):
        basis = jax.nn.one_hot(f, d_in, dtype=leaves[0].dtype)
        parts, offset = [], 0
        for leaf, size in zip(leaves, sizes):
            piece = basis[offset:offset + size].reshape(leaf.shape[1:])
            parts.append(mask.reshape((n,) + (1,) * (leaf.ndim - 1)).astype(leaf.dtype) * piece)
            offset += size
        return jax.tree.unflatten(treedef, parts)

    def one(mask):
        # columns in batches: one JVP over the whole graph per input feature (bounds memory)
        cols = jax.lax.map(lambda f: _jnp_rows(lin(tangent(mask, f)), jnp.arange(n)), jnp.arange(d_in),
                           batch_size=_JVP_BATCH)
        blocks = jnp.transpose(cols, (1, 2, 0))  # (N, D_out, D_in)
        return jnp.linalg.svd(blocks, compute_uv=False)[:, 0]

    return jax.lax.map(one, colour_masks)


def _max_product_bounds(potential, params, graph, rules, states, preds, colour, T: int):
    """M_t(j) for t = 1 … T − 1 (index t; index 0 unused): an upper bound on
    ‖J_t(j←i_{t−1}) ⋯ J_1(i_1←i_0) h⁽⁰⁾_{i_0}‖ over all lower walks ending at j."""
    bounds: list = [None] * T
    if T < 2:
        return bounds, 0
    n_colours = int(colour.max()) + 1 if (colour >= 0).any() else 0
    masks = np.zeros((max(n_colours, 1), len(colour)), np.asarray(states[0]).dtype)
    for a, c in enumerate(colour):
        if c >= 0:
            masks[c, a] = 1.0
    masks = jnp.asarray(masks)
    passes = n_colours
    m1 = np.asarray(_layer_one_products(potential, params, graph, rules, 1, states[0], masks),
                    np.float64)
    bounds[1] = m1.max(axis=0)
    for t in range(2, T):
        norms = np.asarray(_layer_block_norms(potential, params, graph, rules, t, states[t - 1],
                                              masks), np.float64)
        passes += n_colours * sum(int(np.prod(leaf.shape[1:]))
                                  for leaf in jax.tree.leaves(states[t - 1]))
        prev = bounds[t - 1]
        bounds[t] = np.array([max((prev[i] * norms[colour[i], j] for i in p), default=0.0)
                              for j, p in enumerate(preds)])
    return bounds, passes


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


def _suffix_bound(potential, params, graph: Graph, suffix, rules: RuleSet | str = "gi") -> float:
    """The search's bound on |R_W| over the completions of a suffix (i_t, …, i_T), 1 ≤ t < T,
    without the rounding margin (for tests)."""
    _require_single_frame(graph)
    rules = resolve_rules(rules)
    T = potential.config.n_interactions
    suffix = [int(a) for a in suffix]
    t = T + 1 - len(suffix)
    if not 1 <= t < T:
        raise ValueError(f"a bounded suffix has 2 … {T} atoms, got {len(suffix)}")
    pred_idx, preds, colour = _topology(graph)
    states, top = _forward(potential, params, graph, rules)
    bounds, _ = _max_product_bounds(potential, params, graph, rules, states, preds, colour, T)
    row = _gather_rows(top, [suffix[-1]])
    for level in range(T, t, -1):
        here, below = suffix[level - t], suffix[level - t - 1]
        out = np.asarray(_expand(potential, params, graph, rules, level, states[level - 1],
                                 jnp.asarray(row), jnp.asarray([here], jnp.int32),
                                 jnp.asarray(pred_idx)))[0]
        row = out[list(preds[here]).index(below)][None]
    return float(np.linalg.norm(row.astype(np.float64)) * bounds[t][suffix[0]])
