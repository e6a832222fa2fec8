"""Brute-force GNN-LRP relevances written from the definitions only (test reference).

Independent of the engine in ``jaxrel.relevance`` (walks, subsets, n-body): walks are
enumerated with plain Python recursion over an adjacency dict, and every walk or subset
gets its own masked forward/backward pass of the potential (``helpers.masked_atomwise_energy``,
composed from the model's ``embedding`` and ``layer_functions``), as in the published
reference code.
Only the rule sets are shared with the library.

Definitions (walk relevance: Schnake et al., "Higher-order explanations of graph neural
networks via relevant walks", TPAMI 2022, arXiv:2006.03589; subgraph relevance by
indicator masks: Xiong et al., "Efficient computation of higher-order subgraph
attribution via message passing", ICML 2022): with per-layer masks m_t applied as
h⁽ᵗ⁾ ← m_t ⊙ h⁽ᵗ⁾ + (1 − m_t) ⊙ sg(h⁽ᵗ⁾) after the embedding (t = 0) and after each
layer t = 1..T, relevance = Σ h⁽⁰⁾ ⊙ ∂E/∂h⁽⁰⁾ with E = Σ_i E_i (eV).

* walk W = (i_0, …, i_T): m_t = e_{i_t} for t = 0..T;
* subset S: m_t = 1_S for t = 0..T, so R(S) = Σ_{walks inside S} R_W;
* n-body term of a set A: Σ of R_W over walks whose visited atoms are exactly A.
"""

from __future__ import annotations

import functools
import itertools
from collections import defaultdict

import jax
import jax.numpy as jnp
import numpy as np

from helpers import masked_atomwise_energy
from jaxrel.nn import RuleSet


def adjacency(graph) -> dict[int, set[int]]:
    """Real atom → set of real atoms it sends a message to (one frame)."""
    node_mask = np.asarray(graph.node_mask)
    adj = {int(i): set() for i in np.flatnonzero(node_mask)}
    for s, r, real in zip(np.asarray(graph.senders), np.asarray(graph.receivers),
                          np.asarray(graph.edge_mask)):
        if real and node_mask[s] and node_mask[r] and s != r:
            adj[int(s)].add(int(r))
    return adj


def all_walks(graph, n_interactions: int) -> np.ndarray:
    """Every walk (i_0, …, i_T) on the graph with self-loops: (n_walks, T+1) int.

    Each step i_{t-1} → i_t is a self-step or follows a real edge whose sender is
    i_{t-1} and receiver is i_t. Rows are in lexicographic order.
    """
    adj = adjacency(graph)
    walks = []

    def extend(walk):
        if len(walk) == n_interactions + 1:
            walks.append(tuple(walk))
            return
        for nxt in sorted(adj[walk[-1]] | {walk[-1]}):
            extend(walk + [nxt])

    for start in sorted(adj):
        extend([start])
    return np.array(walks, dtype=np.int64).reshape(-1, n_interactions + 1)


def connected_subsets(graph, order: int) -> list[tuple[int, ...]]:
    """All sets of ``order`` real atoms whose induced (undirected) subgraph is connected,
    as sorted tuples in lexicographic order."""
    adj = adjacency(graph)
    out = []
    for combo in itertools.combinations(sorted(adj), order):
        members, seen, stack = set(combo), {combo[0]}, [combo[0]]
        while stack:
            a = stack.pop()
            for b in members - seen:
                if b in adj[a] or a in adj[b]:
                    seen.add(b)
                    stack.append(b)
        if seen == members:
            out.append(combo)
    return out


def _relevance(pot, params, graph, masks, rules):
    """Σ_f h⁽⁰⁾ ⊙ ∂E/∂h⁽⁰⁾ per atom under per-layer masks: (n_atoms,) eV."""
    h0 = pot.embedding(params, graph)
    grad = jax.grad(lambda h: masked_atomwise_energy(pot, params, h, graph, rules, masks).sum())(h0)
    return jnp.sum(h0 * grad, axis=-1)


def _walk_masks(walk, n_atoms):
    return jax.nn.one_hot(walk, n_atoms, dtype=jnp.float64)


def _subset_masks(subset, n_atoms, n_layers):
    """Indicator of the atoms in ``subset`` ((k,) int, −1 = unused slot) on every layer."""
    indicator = jax.nn.one_hot(subset, n_atoms, dtype=jnp.float64).max(axis=0)
    return jnp.broadcast_to(indicator, (n_layers, n_atoms))


def walk_relevance_bruteforce(pot, params, graph, walk, rules: RuleSet | str = "gi") -> float:
    """Relevance of one walk (eV) by one masked forward/backward: m_t = e_{i_t}."""
    walk = jnp.asarray(walk)
    return float(_relevance(pot, params, graph, _walk_masks(walk, graph.n_atoms), rules)[walk[0]])


def subset_relevance_bruteforce(pot, params, graph, subset, rules: RuleSet | str = "gi") -> float:
    """Relevance R(S) of one atom set (eV) by one masked pass: m_t = 1_S for all t."""
    subset = jnp.asarray(list(subset))
    masks = _subset_masks(subset, graph.n_atoms, pot.config.n_interactions + 1)
    return float(_relevance(pot, params, graph, masks, rules).sum())


@functools.lru_cache(maxsize=None)
def _batched(pot, rules, kind):
    """jit(vmap) of the single-walk / single-subset brute force (one pass per row)."""
    n_layers = pot.config.n_interactions + 1

    def one(params, graph, row):
        if kind == "walk":
            return _relevance(pot, params, graph, _walk_masks(row, graph.n_atoms), rules)[row[0]]
        masks = _subset_masks(row, graph.n_atoms, n_layers)
        return _relevance(pot, params, graph, masks, rules).sum()

    return jax.jit(jax.vmap(one, in_axes=(None, None, 0)))


def walk_relevances_bruteforce(pot, params, graph, walks, rules: RuleSet | str = "gi") -> np.ndarray:
    """:func:`walk_relevance_bruteforce` for every row of ``walks`` (vmapped): (n_walks,) eV."""
    return np.asarray(_batched(pot, rules, "walk")(params, graph, jnp.asarray(walks)))


def subset_relevances_bruteforce(pot, params, graph, subsets, rules: RuleSet | str = "gi") -> np.ndarray:
    """:func:`subset_relevance_bruteforce` for every row of ``subsets`` ((n, k) int, −1 =
    unused slot), vmapped: (n,) eV."""
    return np.asarray(_batched(pot, rules, "subset")(params, graph, jnp.asarray(subsets)))


def gradient_times_input(pot, params, graph, rules: RuleSet | str = "gi") -> float:
    """Unmasked Σ h⁽⁰⁾ ⊙ ∂E/∂h⁽⁰⁾ over all atoms and features, eV."""
    return float(_relevance(pot, params, graph, None, rules).sum())


def nbody_from_walks(walks, relevances) -> dict[frozenset, float]:
    """Exact n-body terms by definition: frozenset(atoms visited) → Σ R_W (eV)."""
    terms = defaultdict(float)
    for walk, r in zip(np.asarray(walks), np.asarray(relevances)):
        terms[frozenset(int(a) for a in walk)] += float(r)
    return dict(terms)


def pad_subsets(subsets, width: int) -> np.ndarray:
    """Atom sets of size ≤ ``width`` as an (n, width) int array, −1 in unused slots."""
    out = np.full((len(subsets), width), -1, dtype=np.int64)
    for row, s in zip(out, subsets):
        row[:len(s)] = sorted(s)
    return out
