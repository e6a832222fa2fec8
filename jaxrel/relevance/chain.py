"""Every walk's relevance as a chain of per-step Jacobian blocks: no per-walk or per-subset pass.

Under every rule the backward pass of the rule-substituted network is linear in the
cotangent, and layer t couples atom i only to itself and to the senders of its edges. The
relevance of a walk W = (i_0, …, i_T) (Schnake et al., TPAMI 2022, arXiv:2006.03589) is
therefore a chain of blocks,

    R_W = h⁽⁰⁾[i_0] · J_1[i_1←i_0]ᵀ J_2[i_2←i_1]ᵀ ⋯ J_T[i_T←i_{T−1}]ᵀ ∂E/∂h⁽ᵀ⁾[i_T],

with J_t[i←j] = ∂h⁽ᵗ⁾_i/∂h⁽ᵗ⁻¹⁾_j of the rule-substituted layer at the forward point. Each
layer is split at its gather (:meth:`jaxrel.models.Potential.message_functions`):
h⁽ᵗ⁾ = post_t(h⁽ᵗ⁻¹⁾, pre_t(h⁽ᵗ⁻¹⁾)[senders]) with node-wise pre_t, so

    J_t[i←j] = δ_ij ∂post_i/∂h_i + Σ_{e: j→i} ∂post_i/∂x_e · ∂pre_j/∂h_j.

One VJP of post_t with a cotangent field gives ∂post/∂x_e for every edge e at once: the
gathered argument keeps edges apart. The engine meets in the middle, at layer m = min(T, 2):

* prefixes (i_0 → i_1) forward: a = J_1[i_1←i_0] h⁽⁰⁾[i_0], one JVP of post_1 for the
  self steps and one per in-edge slot (the k-th edge into each receiver), and
  ã = ∂pre_2 · a (node-wise JVP; for T = 1 the prefixes are the atoms, a = h⁽⁰⁾);
* suffixes (i_m, …, i_T) backward from ∂E/∂h⁽ᵀ⁾: per layer t > m one VJP of post_t per
  suffix slot (the k-th suffix starting at each atom), then ∂pre_tᵀ per edge;
* at layer m one VJP of post_m per suffix slot, and for every step q = (j → i) the block
  R[q, p, k] = a_p · g_self[k, i] δ_ij + ã_p · Σ_{e ∈ q} g_x[k, e] over the prefixes p
  ending at j and suffixes k starting at i: a batched matrix product.

Work: O(T · d · (forward pass of one layer)) for the slots plus O(n_walks · F) for the
products, with d the largest degree; nothing runs once per walk or per atom set. The
exact n-body term of an atom set S is the sum of the relevances of the walks whose set of
distinct atoms is S, a segment sum (no Möbius inversion). Tested against the masked
full-graph passes (:func:`jaxrel.relevance.backward.masked_relevance`) and an independent
per-walk brute force to 1e-10 in float64 for SchNet, PaiNN and NequIP under every rule.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrel.graph import Graph
from jaxrel.nn import RuleSet


class ChainTopology(NamedTuple):
    """Index tables of one frame's walks (host-built by :func:`chain_topology`; −1 = empty slot).

    With S steps (self steps and atom pairs joined by at least one real edge), E edge slots,
    N atom slots, T interactions and meet layer m = min(T, 2)::

        real                (n_real,) int32   | the real atoms (the walks' last atoms)
        step_src, step_dst  (S,) int32        | the step j → i
        step_self           (S,) bool         | True for self steps (j = i)
        edge_step           (E,) int32        | the step of each edge (S for padded edges: dropped)
        edge_in_slot        (E,) int32        | rank of the edge among the real edges into its receiver
        in_slots            (L,) int32        | 0 … L − 1, L = most real edges into one atom
        prefix_at           (N, P) int32      | prefixes ending at each atom (steps for m = 2, atoms for m = 1)
        suffix_at           tuple of (N, K_t) | level t = T, …, m: the suffixes (i_t, …, i_T) starting at
                                                each atom, as indices into that level's suffix list
        expand_parent       tuple of (n,)     | level t → t − 1 for t = T, …, m + 1: the level-t suffix
        expand_slot         tuple of (n,)     | a new suffix extends, that suffix's slot,
        expand_step         tuple of (n,)     | and the step (i_{t−1} → i_t) it is extended by
    """

    real: np.ndarray
    step_src: np.ndarray
    step_dst: np.ndarray
    step_self: np.ndarray
    edge_step: np.ndarray
    edge_in_slot: np.ndarray
    in_slots: np.ndarray
    prefix_at: np.ndarray
    suffix_at: tuple
    expand_parent: tuple
    expand_slot: tuple
    expand_step: tuple


class ChainWalks(NamedTuple):
    """The walks of one frame in the layout of :func:`chain_relevance` (host arrays).

    ``atoms`` (n_walks, T + 1) int32 lists every walk once; ``flat`` (n_walks,) int64 is each
    walk's position in the flattened (S, P, K) block that :func:`chain_relevance` returns.
    """

    atoms: np.ndarray
    flat: np.ndarray


def _ranks(groups: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """For items labelled by ``groups``: each item's rank within its group (stable), and a
    (n_groups, width) table of item indices (−1 padding)."""
    order = np.argsort(groups, kind="stable")
    counts = np.bincount(groups, minlength=n_groups)
    starts = np.cumsum(counts) - counts
    rank = np.empty(len(groups), np.int64)
    rank[order] = np.arange(len(groups)) - np.repeat(starts, counts)
    table = np.full((n_groups, max(1, int(counts.max(initial=0)))), -1, np.int32)
    table[groups, rank] = np.arange(len(groups))
    return rank, table


def chain_topology(graph: Graph, n_interactions: int) -> tuple[ChainTopology, ChainWalks]:
    """Steps, slots and walks of one frame for :func:`chain_relevance` (numpy, vectorised).

    Args:
        graph: one frame.
        n_interactions: T of the model (≥ 1).

    Returns:
        ``(topology, walks)``.
    """
    T = n_interactions
    n = graph.n_atoms
    node_mask, edge_mask = np.asarray(graph.node_mask), np.asarray(graph.edge_mask)
    senders, receivers = np.asarray(graph.senders), np.asarray(graph.receivers)
    real = np.flatnonzero(node_mask).astype(np.int32)
    edge_keys = senders[edge_mask].astype(np.int64) * n + receivers[edge_mask]
    keys = np.unique(np.concatenate([real.astype(np.int64) * (n + 1), edge_keys]))
    step_src, step_dst = (keys // n).astype(np.int32), (keys % n).astype(np.int32)
    n_steps = len(keys)
    edge_step = np.full(len(senders), n_steps, np.int32)
    edge_step[edge_mask] = np.searchsorted(keys, edge_keys)
    in_rank, _ = _ranks(receivers[edge_mask], n)
    edge_in_slot = np.zeros(len(senders), np.int32)
    edge_in_slot[edge_mask] = in_rank
    n_in = int(in_rank.max()) + 1 if len(in_rank) else 1
    _, into_table = _ranks(step_dst, n)                                # steps ending at each atom
    m = min(T, 2)
    if m == 2:
        prefix_at, prefix_atoms = into_table, np.stack([step_src, step_dst], axis=1)
    else:
        prefix_at = np.full((n, 1), -1, np.int32)
        prefix_at[real, 0] = real
        prefix_atoms = np.arange(n, dtype=np.int32)[:, None]
    suffix_atoms = real[:, None]
    suffix_at, parents, slots, steps = [], [], [], []
    for level in range(T, m - 1, -1):
        rank, table = _ranks(suffix_atoms[:, 0], n)
        suffix_at.append(table)
        if level == m:
            break
        into = into_table[suffix_atoms[:, 0]]                          # (n_suffixes, P)
        parent, column = np.nonzero(into >= 0)
        step = into[parent, column]
        parents.append(parent.astype(np.int32))
        slots.append(rank[parent].astype(np.int32))
        steps.append(step.astype(np.int32))
        suffix_atoms = np.concatenate([step_src[step][:, None], suffix_atoms[parent]], axis=1)
    topology = ChainTopology(real, step_src, step_dst, step_src == step_dst, edge_step,
                             edge_in_slot, np.arange(n_in, dtype=np.int32), prefix_at, tuple(suffix_at),
                             tuple(parents), tuple(slots), tuple(steps))
    P, K = prefix_at.shape[1], suffix_at[-1].shape[1]
    pre = prefix_at[step_src]                                          # (S, P)
    suf = suffix_at[-1][step_dst]                                      # (S, K)
    q, p, k = np.nonzero((pre >= 0)[:, :, None] & (suf >= 0)[:, None, :])
    atoms = np.concatenate([prefix_atoms[pre[q, p]], suffix_atoms[suf[q, k]]], axis=1).astype(np.int32)
    flat = (q.astype(np.int64) * P + p) * K + k
    return topology, ChainWalks(atoms, flat)


def stack_topologies(topologies: list[ChainTopology], walks: list[ChainWalks]) -> tuple[ChainTopology, list[ChainWalks]]:
    """Topologies of frames of one size class padded to common shapes and stacked on a
    leading frame axis, for one vmapped :func:`chain_relevance` call over the frames.

    Padded steps, slots and suffixes point at index 0 with zero weight and are never read;
    padded edges stay dropped. Each frame's walks get their positions in the padded block.

    Returns:
        ``(topology with a leading frame axis, walks per frame)``.
    """
    first = topologies[0]
    for t in topologies[1:]:
        if len(t.suffix_at) != len(first.suffix_at) or t.edge_step.shape != first.edge_step.shape:
            raise ValueError("frames of one call must share the model depth and the edge capacity (one size class)")
    n_steps = max(len(t.step_src) for t in topologies)

    def pad(arrays, fill=0):
        width = [max(a.shape[k] for a in arrays) for k in range(arrays[0].ndim)]
        return np.stack([np.pad(a, [(0, w - n) for w, n in zip(width, a.shape)], constant_values=fill)
                         for a in arrays])

    def field(name, fill=0):
        return pad([getattr(t, name) for t in topologies], fill)

    def levels(name, fill):
        return tuple(pad([getattr(t, name)[k] for t in topologies], fill) for k in range(len(getattr(first, name))))

    edge_step = np.stack([np.where(t.edge_step == len(t.step_src), n_steps, t.edge_step) for t in topologies])
    stacked = ChainTopology(field("real"), field("step_src"), field("step_dst"), field("step_self"), edge_step,
                            field("edge_in_slot"), np.arange(max(len(t.in_slots) for t in topologies), dtype=np.int32)[None]
                            .repeat(len(topologies), 0), field("prefix_at", -1), levels("suffix_at", -1),
                            levels("expand_parent", 0), levels("expand_slot", 0), levels("expand_step", 0))
    P, K = stacked.prefix_at.shape[2], stacked.suffix_at[-1].shape[2]
    moved = []
    for t, w in zip(topologies, walks):
        p, k = t.prefix_at.shape[1], t.suffix_at[-1].shape[1]
        q, rest = np.divmod(w.flat, p * k)
        moved.append(ChainWalks(w.atoms, (q * P + rest // k) * K + rest % k))
    return stacked, moved


def _flat(tree, lead: int) -> jax.Array:
    """Leaves reshaped to (leading axes…, −1) and concatenated on the last axis."""
    return jnp.concatenate([x.reshape(x.shape[:lead] + (-1,)) for x in jax.tree.leaves(tree)], axis=-1)


def _gather(tree, index):
    return jax.tree.map(lambda x: x[index], tree)


def _broadcast(weights, x, lead: int = 1):
    """``weights`` (leading axes) reshaped to broadcast against ``x``."""
    return weights.reshape(weights.shape + (1,) * (x.ndim - lead))


def _fields(vectors, table, template):
    """Slot fields (K, N, …) from per-suffix vectors (a pytree, rows = suffixes) and the (N, K)
    slot table (−1 = empty slot: zero)."""
    valid = (table.T >= 0)

    def one(v, t):
        x = v[jnp.maximum(table.T, 0)]
        return jnp.where(_broadcast(valid, x, 2), x, 0).astype(t.dtype)

    return jax.tree.map(one, vectors, template)


@partial(jax.jit, static_argnames=("potential", "rules", "chunk_size"))
def chain_relevance(potential, params, graph: Graph, topology: ChainTopology, rules: RuleSet,
                    chunk_size: int | None = None):
    """The relevance of every walk of one frame, as one (S, P, K) block.

    Args:
        potential, params: a model with :meth:`~jaxrel.models.Potential.message_functions`.
        graph: one frame.
        topology: its :func:`chain_topology`.
        rules: the rule set.
        chunk_size: steps per chunk of the final block product (bounds its memory to
            chunk_size · P · (D + Dx) floats); None = all steps at once.

    Returns:
        ``(blocks (S, P, K) eV, energy () eV, gradient_x_input () eV)``: ``blocks.ravel()[walks.flat]``
        are the relevances of the walks of :class:`ChainWalks` (other entries are 0), and
        gradient_x_input is Σ h⁽⁰⁾ ⊙ ∂E/∂h⁽⁰⁾ of the unmasked rule-substituted network.
    """
    topology = jax.tree.map(jnp.asarray, topology)
    splits, energy_readout = potential.message_functions(params, graph, rules)
    T = len(splits)
    m = min(T, 2)
    n_steps = topology.step_src.shape[0]
    states, sents = [potential.embedding(params, graph)], []
    for pre, post in splits:
        sents.append(_gather(pre(states[-1]), graph.senders))
        states.append(post(states[-1], sents[-1]))
    energy, readout_vjp = jax.vjp(lambda x: energy_readout(x).sum(), states[-1])
    top = readout_vjp(jnp.ones((), energy.dtype))[0]

    def edge_sum(per_edge, lead: int):
        """Σ over the edges of each step: axis ``lead`` E → S."""
        moved = jnp.moveaxis(per_edge, lead, 0)
        return jnp.moveaxis(jax.ops.segment_sum(moved, topology.edge_step, num_segments=n_steps), 0, lead)

    suffix = _gather(top, topology.real)
    for level_index, level in enumerate(range(T, m, -1)):
        pre, post = splits[level - 1]
        _, post_vjp = jax.vjp(post, states[level - 1], sents[level - 1])
        g_self, g_x = jax.vmap(post_vjp)(_fields(suffix, topology.suffix_at[level_index], states[level]))
        _, pre_vjp = jax.vjp(pre, _gather(states[level - 1], graph.senders))
        per_edge = jax.vmap(lambda g: pre_vjp(g)[0])(g_x)                # (K, E, …) at the senders
        slot, step = topology.expand_slot[level_index], topology.expand_step[level_index]
        suffix = jax.tree.map(
            lambda s, e: _broadcast(topology.step_self[step], s, 2) * s[slot, topology.step_dst[step]]
            + edge_sum(e, 1)[slot, step], g_self, per_edge)
    pre_m, post_m = splits[m - 1]
    _, post_vjp = jax.vjp(post_m, states[m - 1], sents[m - 1])
    g_self, g_x = jax.vmap(post_vjp)(_fields(suffix, topology.suffix_at[-1], states[m]))
    if m == 1:
        a, at = states[0], jnp.arange(graph.n_atoms)
    else:
        a, at = _prefixes(splits[0], states[0], sents[0], graph, topology, edge_sum), topology.step_dst
    a_tilde = jax.jvp(pre_m, (_gather(states[m - 1], at),), (a,))[1]
    self_blocks = _flat(g_self, 2)[:, topology.step_dst] * topology.step_self[None, :, None]   # (K, S, D)
    blocks = jnp.concatenate([self_blocks, edge_sum(_flat(g_x, 2), 1)], axis=-1)                # (K, S, D + Dx)
    rows = jnp.concatenate([_flat(a, 1), _flat(a_tilde, 1)], axis=-1)                          # (prefixes, D + Dx)

    def step_block(step):
        prefix = topology.prefix_at[topology.step_src[step]]                                   # (P,)
        return jnp.where((prefix >= 0)[:, None], rows[jnp.maximum(prefix, 0)], 0) @ blocks[:, step].T

    steps = jnp.arange(n_steps)
    relevance = (jax.vmap(step_block)(steps) if chunk_size is None
                 else jax.lax.map(step_block, steps, batch_size=chunk_size))
    h0 = states[0]
    gradient = jax.grad(lambda h: potential.atomwise_energy_from_embedding(params, h, graph, rules).sum())(h0)
    return relevance, energy, jnp.sum(h0 * gradient)


def _prefixes(split, h0, sent0, graph: Graph, topology: ChainTopology, edge_sum):
    """a_q = J_1[i←j] h⁽⁰⁾_j for every step q = (j → i): a pytree with S rows.

    The self part is one JVP of post_1 in its node-wise argument; the edge part one JVP per
    in-edge slot l (the l-th edge into each receiver carries ∂pre_1 · h⁽⁰⁾ of its sender).
    """
    pre, post = split
    _, post_jvp = jax.linearize(post, h0, sent0)
    x0_sent = _gather(jax.jvp(pre, (h0,), (h0,))[1], graph.senders)
    zero_h, zero_x = jax.tree.map(jnp.zeros_like, h0), jax.tree.map(jnp.zeros_like, sent0)
    self_out = post_jvp(h0, zero_x)

    def slot(l):
        keep = topology.edge_in_slot == l
        return post_jvp(zero_h, jax.tree.map(lambda x: jnp.where(_broadcast(keep, x), x, 0), x0_sent))

    per_slot = jax.vmap(slot)(topology.in_slots)                         # (L, N, …) at the receivers
    edges = jax.tree.map(lambda e: edge_sum(e[topology.edge_in_slot, graph.receivers], 0), per_slot)
    return jax.tree.map(lambda s, e: _broadcast(topology.step_self, s) * s[topology.step_dst] + e,
                        self_out, edges)


def walk_sets(walks: ChainWalks, sets: dict[int, np.ndarray], n_atoms: int) -> tuple[np.ndarray, np.ndarray]:
    """The atom set of each walk as (body order, row in ``sets[order]``); row −1 for walks whose
    set is not listed (a body order above those in ``sets``).

    Args:
        walks: from :func:`chain_topology`.
        sets: {n: (m_n, n) sorted atom sets, rows sorted} (as :func:`~jaxrel.relevance.connected_sets`).
        n_atoms: atom capacity of the frame.

    Returns:
        ``(order (n_walks,) int, row (n_walks,) int64)``.
    """
    columns = [c.astype(np.int64) for c in walks.atoms.T]
    for i in range(len(columns)):                      # a sorting network on the columns
        for j in range(len(columns) - 1 - i):
            columns[j], columns[j + 1] = np.minimum(columns[j], columns[j + 1]), np.maximum(columns[j], columns[j + 1])
    key, order = columns[0].copy(), np.ones(len(columns[0]), np.int64)
    for previous, column in zip(columns, columns[1:]):
        fresh = column != previous
        key = np.where(fresh, key * n_atoms + column, key)
        order += fresh
    row = np.full(len(key), -1, np.int64)
    for n, listed in sets.items():
        pick = order == n
        if not pick.any() or not len(listed):
            continue
        listed_keys = walk_keys(listed, n_atoms)
        where = np.clip(np.searchsorted(listed_keys, key[pick]), 0, len(listed_keys) - 1)
        row[pick] = np.where(listed_keys[where] == key[pick], where, -1)
    return order, row


def walk_keys(atoms: np.ndarray, n_atoms: int) -> np.ndarray:
    """One int64 per row of atom indices (a walk or a sorted set), increasing with the rows'
    lexicographic order: Σ_c atoms[:, c] · n_atoms^(width − 1 − c)."""
    keys = np.zeros(len(atoms), np.int64)
    for column in np.asarray(atoms, np.int64).T:
        keys = keys * n_atoms + column
    return keys
