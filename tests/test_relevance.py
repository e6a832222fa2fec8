"""The relevance engine (walks, subsets, n-body, top-K) against a brute-force reference.

Every engine result is compared with ``relevance_reference``, written from the
definitions only (one masked forward/backward per walk or per subset; Schnake et al.,
TPAMI 2022, arXiv:2006.03589; Xiong et al., ICML 2022), for SchNet and PaiNN with
T = 2 and 3 interactions. float64 throughout (conftest enables it).
"""

import itertools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import relevance_reference as ref
from jaxrel.graph import Graph, build_graphs, pad_graph
from jaxrel.models import ModelConfig, Potential
from jaxrel.nn import RuleSet
from jaxrel.relevance import enumerate_walks, nbody_decomposition, subset_relevance, top_k_walks, walk_relevance

MODELS = ["schnet", "painn", "nequip"]
DEPTHS = [2, 3]
SPECIES = np.array([6, 8, 1, 1, 6, 1, 1])
CUTOFF = 2.2
RTOL = 1e-8  # engine vs brute force, relative to each value
ATOL = 1e-12  # relative to the largest |R| of the frame


def frame() -> Graph:
    """7 atoms, 7 bonds within the cutoff, atom 4 isolated: a sparse, uneven graph."""
    pos = np.random.default_rng(0).uniform(0, 3.2, size=(len(SPECIES), 3))
    return build_graphs(pos, SPECIES, CUTOFF, min_distance=0.8).frame(0)


def make(model, n_interactions, seed=1):
    config = ModelConfig(model, (1, 6, 8), cutoff=CUTOFF, n_features=8,
                         n_interactions=n_interactions, n_rbf=6, dtype="float64")
    return Potential.create(config, {1: -0.5, 6: -37.8, 8: -75.0}, energy_scale=0.3, seed=seed)


@dataclass(frozen=True)
class Case:
    pot: Potential
    params: nnx.State
    graph: Graph
    T: int
    walks: np.ndarray  # (n_walks, T+1) from the reference enumeration
    relevance: np.ndarray  # (n_walks,) eV, one masked pass per walk, GI rules

    @property
    def atol(self) -> float:
        return ATOL * np.abs(self.relevance).max()


@pytest.fixture(scope="module", params=[(m, t) for m in MODELS for t in DEPTHS],
                ids=lambda p: f"{p[0]}-T{p[1]}")
def case(request) -> Case:
    model, T = request.param
    pot, params = make(model, T)
    g = frame()
    walks = ref.all_walks(g, T)
    relevance = ref.walk_relevances_bruteforce(pot, params, g, walks, "gi")
    assert np.abs(relevance).max() > 1e-3  # relevances are not trivially zero
    return Case(pot, params, g, T, walks, relevance)


def as_set(walks) -> set[tuple[int, ...]]:
    return {tuple(int(a) for a in w) for w in np.asarray(walks)}


def walk_lookup(case: Case) -> dict[tuple[int, ...], float]:
    return dict(zip(map(tuple, case.walks.tolist()), case.relevance))


# 1. walk enumeration

def test_enumerate_walks_gives_every_walk_with_self_loops_once(case):
    walks = enumerate_walks(case.graph, case.T)
    assert walks.shape[1] == case.T + 1 and np.issubdtype(walks.dtype, np.integer)
    assert len(as_set(walks)) == len(walks)  # no duplicates
    assert as_set(walks) == as_set(case.walks)
    isolated = [a for a, nbrs in ref.adjacency(case.graph).items() if not nbrs]
    assert isolated  # the frame has an isolated atom: its only walk is the self-walk
    for a in isolated:
        assert [tuple(w) for w in walks.tolist() if a in w] == [(a,) * (case.T + 1)]


@pytest.mark.parametrize("T", [1, 2, 3])
def test_walk_count_on_a_complete_graph_is_n_times_degree_plus_one_to_the_t(T):
    pos = np.random.default_rng(1).uniform(0, 1.5, size=(5, 3))
    g = build_graphs(pos, SPECIES[:5], 5.0).frame(0)
    assert int(g.edge_mask.sum()) == 5 * 4  # complete: d = 4 neighbours each
    walks = enumerate_walks(g, T)
    assert len(walks) == 5 * (4 + 1) ** T
    assert as_set(walks) == set(itertools.product(range(5), repeat=T + 1))
    assert as_set(ref.all_walks(g, T)) == as_set(walks)


# 2. walk relevance

def test_walk_relevance_equals_one_masked_pass_per_walk(case):
    order = np.random.default_rng(0).permutation(len(case.walks))  # any row order
    got = walk_relevance(case.pot, case.params, case.graph, case.walks[order])
    assert got.shape == (len(case.walks),)
    np.testing.assert_allclose(got, case.relevance[order], rtol=RTOL, atol=case.atol)


@pytest.mark.parametrize("model", MODELS)
def test_walk_and_subset_relevance_follow_the_lrp_gamma_rule(model):
    rules = RuleSet("lrp-gamma", gamma=0.25)
    pot, params = make(model, 2)
    g = frame()
    walks = ref.all_walks(g, 2)
    expected = ref.walk_relevances_bruteforce(pot, params, g, walks, rules)
    gi = ref.walk_relevances_bruteforce(pot, params, g, walks, "gi")
    atol = ATOL * np.abs(expected).max()
    assert np.abs(expected - gi).max() > 1e-3 * np.abs(gi).max()  # the rule matters here
    np.testing.assert_allclose(walk_relevance(pot, params, g, walks, rules=rules), expected,
                               rtol=RTOL, atol=atol)
    subsets = ref.pad_subsets(ref.connected_subsets(g, 1) + ref.connected_subsets(g, 3), 4)
    np.testing.assert_allclose(subset_relevance(pot, params, g, subsets, rules=rules),
                               ref.subset_relevances_bruteforce(pot, params, g, subsets, rules),
                               rtol=RTOL, atol=atol)
    np.testing.assert_allclose(expected.sum(), ref.gradient_times_input(pot, params, g, rules),
                               rtol=1e-10)


# 3. subset relevance

def test_subset_relevance_equals_bruteforce_and_the_walks_inside_the_subset(case):
    g = case.graph
    sets = [s for k in (1, 2, 3, 4) for s in ref.connected_subsets(g, k)]
    sets += [(0, 4), (2, 4, 6)]  # not connected: only walks of its parts lie inside
    subsets = ref.pad_subsets(sets, 4)  # sizes 1..4 in one array, −1 = unused slot
    got = subset_relevance(case.pot, case.params, g, subsets)
    assert got.shape == (len(sets),)
    expected = ref.subset_relevances_bruteforce(case.pot, case.params, g, subsets, "gi")
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=case.atol)
    inside = [case.relevance[np.isin(case.walks, s).all(axis=1)].sum() for s in sets]
    np.testing.assert_allclose(got, inside, rtol=1e-9, atol=case.atol)
    single = ref.subset_relevance_bruteforce(case.pot, case.params, g, sets[-3], "gi")
    np.testing.assert_allclose(got[-3], single, rtol=RTOL, atol=case.atol)


# 4. conservation

def test_all_walks_sum_to_gradient_times_input(case):
    gxi = ref.gradient_times_input(case.pot, case.params, case.graph, "gi")
    np.testing.assert_allclose(case.relevance.sum(), gxi, rtol=1e-10)  # the reference itself
    walks = enumerate_walks(case.graph, case.T)
    total = walk_relevance(case.pot, case.params, case.graph, walks).sum()
    np.testing.assert_allclose(total, gxi, rtol=1e-10)
    everything = ref.pad_subsets([tuple(range(len(SPECIES)))], len(SPECIES))
    np.testing.assert_allclose(subset_relevance(case.pot, case.params, case.graph, everything)[0],
                               gxi, rtol=1e-10)


def zero_node_biases_and_shifts(params):
    """Zero every node-path bias (filter biases are edge weights and stay) and the
    per-species energy shifts, in place (as in test_models)."""

    def zero(path, x):
        names = [str(getattr(k, "key", k)) for k in path]
        node_bias = names[-1] == "bias" and "filter" not in names
        return jnp.zeros_like(x) if node_bias or names[-1] == "shifts" else x

    nnx.replace_by_pure_dict(params, jax.tree_util.tree_map_with_path(zero, nnx.to_pure_dict(params)))


@pytest.mark.parametrize("T", DEPTHS)
@pytest.mark.parametrize("model", MODELS)
def test_all_walks_sum_to_the_energy_for_gi_rules_without_biases_or_shifts(model, T):
    """Degree-1 homogeneity per walk (Schnake et al. 2022); for PaiNN this holds because
    its source term c(s_j) ⊙ r̂_ij passes relevance through c (r̂ is an edge weight)."""
    pot, params = make(model, T)
    g = frame()
    walks = enumerate_walks(g, T)
    with_shifts = walk_relevance(pot, params, g, walks).sum()
    assert abs(with_shifts - float(pot.energy(params, g))) > 1.0  # shifts carry no relevance
    zero_node_biases_and_shifts(params)
    energy = float(pot.energy(params, g))
    np.testing.assert_allclose(walk_relevance(pot, params, g, walks).sum(), energy, rtol=1e-10)
    np.testing.assert_allclose(nbody_decomposition(pot, params, g, max_order=T + 1).total, energy,
                               rtol=1e-10)


# 5. n-body decomposition

def test_nbody_tables_are_the_walks_grouped_by_the_atoms_they_visit(case):
    g, T = case.graph, case.T
    exact = ref.nbody_from_walks(case.walks, case.relevance)
    species = np.asarray(g.species)
    for max_order in range(1, T + 2):
        nb = nbody_decomposition(case.pot, case.params, g, max_order=max_order)
        assert sorted(nb.orders) == list(range(1, max_order + 1))
        listed = 0.0
        for order, table in nb.orders.items():
            atoms = np.asarray(table.atoms)
            assert atoms.shape == (len(table.relevance), order)
            assert (np.diff(atoms, axis=1) > 0).all()  # sorted ascending, distinct
            assert as_set(atoms) == set(ref.connected_subsets(g, order))
            np.testing.assert_array_equal(table.species, species[atoms])
            expected = [exact.get(frozenset(a), 0.0) for a in atoms.tolist()]
            np.testing.assert_allclose(table.relevance, expected, rtol=1e-8, atol=case.atol)
            listed += float(np.sum(table.relevance))
        higher = sum(r for s, r in exact.items() if len(s) > max_order)
        np.testing.assert_allclose(nb.residual, higher, atol=1e-10 * np.abs(case.relevance).max())
        np.testing.assert_allclose(nb.total, case.relevance.sum(), rtol=1e-10)
        np.testing.assert_allclose(nb.total - listed, nb.residual, atol=1e-12)
        np.testing.assert_allclose(nb.energy, float(case.pot.energy(case.params, g)), rtol=1e-12)
    assert abs(nb.residual) < 1e-10 * np.abs(case.relevance).max()  # max_order = T + 1
    np.testing.assert_allclose(listed, nb.total, rtol=1e-10)
    assert abs(sum(r for s, r in exact.items() if len(s) == T + 1)) > 0  # top order is used


def test_sets_missing_from_the_nbody_tables_have_zero_nbody_relevance(case):
    """Möbius inversion of brute-force subset relevances over *all* atom sets: sets that
    are not connected (e.g. non-adjacent pairs) get exactly zero."""
    g = case.graph
    atoms = sorted(ref.adjacency(g))
    sets = [s for k in range(1, min(4, case.T + 1) + 1) for s in itertools.combinations(atoms, k)]
    subset_r = dict(zip(sets, ref.subset_relevances_bruteforce(
        case.pot, case.params, g, ref.pad_subsets(sets, 4), "gi")))
    tables = nbody_decomposition(case.pot, case.params, g, max_order=min(4, case.T + 1)).orders
    listed = {tuple(a): r for t in tables.values() for a, r in zip(t.atoms.tolist(), t.relevance)}
    missing = 0
    for s in sets:
        mobius = sum((-1) ** (len(s) - k) * subset_r[sub]
                     for k in range(1, len(s) + 1) for sub in itertools.combinations(s, k))
        if s in listed:
            np.testing.assert_allclose(listed[s], mobius, rtol=1e-7,
                                       atol=1e-10 * np.abs(case.relevance).max())
        else:
            missing += 1
            assert abs(mobius) < 1e-10 * np.abs(case.relevance).max(), s
    assert missing > 0


# 6. padding, chunking and jit: properties of the engine's bookkeeping, not of the depth,
# so they are checked at T = 2 only (their T = 3 cases were among the suite's slowest tests)

def only_at_depth_2(case: Case) -> None:
    if case.T != 2:
        pytest.skip("padding, chunking and jit do not depend on the depth; checked at T = 2")


def test_padding_changes_no_relevance(case):
    only_at_depth_2(case)
    g = case.graph
    padded = pad_graph(g, g.n_atoms + 3, g.n_edges + 11)
    padded = padded._replace(positions=padded.positions.at[g.n_atoms:].set(0.3))  # overlapping junk
    assert as_set(enumerate_walks(padded, case.T)) == as_set(case.walks)
    got = walk_relevance(case.pot, case.params, padded, case.walks)
    np.testing.assert_allclose(got, case.relevance, rtol=1e-10, atol=case.atol)
    subsets = ref.pad_subsets(ref.connected_subsets(g, 2) + ref.connected_subsets(g, 3), 4)
    np.testing.assert_allclose(subset_relevance(case.pot, case.params, padded, subsets),
                               subset_relevance(case.pot, case.params, g, subsets),
                               rtol=1e-10, atol=case.atol)
    nb_p = nbody_decomposition(case.pot, case.params, padded, max_order=3)
    nb = nbody_decomposition(case.pot, case.params, g, max_order=3)
    for order, table in nb.orders.items():
        np.testing.assert_array_equal(nb_p.orders[order].atoms, table.atoms)
        np.testing.assert_allclose(nb_p.orders[order].relevance, table.relevance, rtol=1e-10, atol=case.atol)
    np.testing.assert_allclose([nb_p.total, nb_p.energy, nb_p.residual],
                               [nb.total, nb.energy, nb.residual], rtol=1e-10, atol=case.atol)
    walks_p, r_p = top_k_walks(case.pot, case.params, padded, 5)
    walks_u, r_u = top_k_walks(case.pot, case.params, g, 5)
    assert as_set(walks_p) == as_set(walks_u)
    np.testing.assert_allclose(r_p, r_u, rtol=1e-10)


def test_chunk_size_changes_no_result(case):
    only_at_depth_2(case)
    pot, params, g = case.pot, case.params, case.graph
    few = case.walks[::7]
    np.testing.assert_allclose(walk_relevance(pot, params, g, few, chunk_size=1),
                               walk_relevance(pot, params, g, few, chunk_size=None), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(walk_relevance(pot, params, g, case.walks, chunk_size=7),
                               walk_relevance(pot, params, g, case.walks), rtol=1e-12, atol=1e-15)
    subsets = ref.pad_subsets(ref.connected_subsets(g, 1) + ref.connected_subsets(g, 3), 4)
    np.testing.assert_allclose(subset_relevance(pot, params, g, subsets, chunk_size=1),
                               subset_relevance(pot, params, g, subsets), rtol=1e-12, atol=1e-15)
    a = nbody_decomposition(pot, params, g, max_order=3, chunk_size=1)
    b = nbody_decomposition(pot, params, g, max_order=3)
    for order in b.orders:
        np.testing.assert_array_equal(a.orders[order].atoms, b.orders[order].atoms)
        np.testing.assert_allclose(a.orders[order].relevance, b.orders[order].relevance,
                                   rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(a.residual, b.residual, atol=1e-14)


def test_eager_execution_equals_the_jitted_engine(case):
    only_at_depth_2(case)
    pot, params, g = case.pot, case.params, case.graph
    few = case.walks[::11]
    jitted = nbody_decomposition(pot, params, g, max_order=2)
    with jax.disable_jit():
        eager_walks = walk_relevance(pot, params, g, few, chunk_size=4)
        eager = nbody_decomposition(pot, params, g, max_order=2, chunk_size=4)
    np.testing.assert_allclose(eager_walks, walk_relevance(pot, params, g, few), rtol=1e-10, atol=case.atol)
    for order in jitted.orders:
        np.testing.assert_allclose(eager.orders[order].relevance, jitted.orders[order].relevance,
                                   rtol=1e-10, atol=case.atol)


# 7. top-K walks

@pytest.mark.parametrize("k", [1, 5, 20])
def test_top_k_walks_are_the_k_largest_by_magnitude(case, k):
    walks, relevance = top_k_walks(case.pot, case.params, case.graph, k)
    walks, relevance = np.asarray(walks), np.asarray(relevance)
    assert walks.shape == (k, case.T + 1) and relevance.shape == (k,)
    assert len(as_set(walks)) == k
    magnitude = np.abs(relevance)
    assert (np.diff(magnitude) <= 0).all()  # sorted by |R| descending
    lookup = walk_lookup(case)
    assert as_set(walks) <= set(lookup)  # genuine walks ...
    np.testing.assert_allclose(relevance, [lookup[tuple(w)] for w in walks.tolist()],
                               rtol=RTOL, atol=case.atol)  # ... with their true relevance
    best = np.argsort(-np.abs(case.relevance), kind="stable")
    np.testing.assert_allclose(magnitude, np.abs(case.relevance[best[:k]]), rtol=RTOL, atol=case.atol)
    sorted_mag = np.abs(case.relevance[best])
    if sorted_mag[k - 1] - sorted_mag[k] > 1e-6 * sorted_mag[0]:  # no tie at the boundary
        assert as_set(walks) == as_set(case.walks[best[:k]])


def test_walk_selection_by_atom_order_and_start_matches_a_direct_filter(case):
    from jaxrel.relevance import body_order, select_walks

    walks = case.walks
    orders = np.array([len(set(w)) for w in walks.tolist()])
    np.testing.assert_array_equal(body_order(walks), orders)
    a, b = int(case.graph.senders[0]), int(case.graph.receivers[0])  # a bonded pair
    chosen = select_walks(walks, atoms=[a, b], order=2)
    expected = [w for w, o in zip(walks.tolist(), orders) if o == 2 and {a, b} <= set(w)]
    assert len(expected) > 0 and chosen.tolist() == expected
    assert (select_walks(walks, start=3)[:, 0] == 3).all()
    with pytest.raises(ValueError, match="no walk visits atoms"):
        select_walks(walks, atoms=4, order=2)  # atom 4 is isolated: only its self-walk
