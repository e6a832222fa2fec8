"""The walk-chain engine (jaxrel.relevance.chain) against the masked full-graph passes.

Every rule, every architecture, depths 1 to 4 and graphs with repeated edges: the walk
relevances equal an independent brute force (one masked forward/backward per walk,
``relevance_reference``) to 1e-10 in float64 (conftest enables it). test_relevance checks the
n-body tables, which sum the walks, against Möbius inversion of brute-force subset relevances.
"""

import numpy as np
import pytest

import relevance_reference as ref
from jaxrel.graph import Graph, build_graphs, edge_vectors
from jaxrel.nn import RULE_NAMES, RuleSet
from jaxrel.relevance import nbody_decomposition, nbody_decompositions, walk_relevance
from jaxrel.relevance.chain import chain_relevance, chain_topology
from test_relevance import CUTOFF, SPECIES, frame, make

TOLERANCE = 1e-10  # relative to the largest |R| of the frame


def close(got, expected, scale):
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE * scale)


@pytest.mark.parametrize("model,T,names", [("schnet", 3, RULE_NAMES), ("painn", 2, ("lrp-gamma", "identity")),
                                           ("nequip", 2, ("lrp-eps",))])
def test_every_walk_equals_the_masked_bruteforce_under_every_rule(model, T, names):
    """Every walk of the frame: the chain equals one masked full-graph pass per walk. SchNet under
    every rule; PaiNN and NequIP under the rules that change their blocks most (GI for all three
    in test_relevance, whose n-body tables are also checked against Möbius inversion)."""
    pot, params = make(model, T)
    g = frame()
    walks = ref.all_walks(g, T)
    for name in names:
        rules = RuleSet(name, gamma=0.3) if name == "lrp-gamma" else RuleSet(name)
        expected = ref.walk_relevances_bruteforce(pot, params, g, walks, rules)
        assert np.abs(expected).max() > 1e-3
        close(walk_relevance(pot, params, g, walks, rules), expected, np.abs(expected).max())


@pytest.mark.parametrize("T", [1, 4])
def test_walk_relevances_at_depths_one_and_four_equal_the_bruteforce(T):
    pot, params = make("schnet", T)
    g = frame()
    walks = ref.all_walks(g, T)
    expected = ref.walk_relevances_bruteforce(pot, params, g, walks, "lrp-eps")
    got = walk_relevance(pot, params, g, walks, "lrp-eps")
    close(got, expected, np.abs(expected).max())
    np.testing.assert_allclose(got.sum(), ref.gradient_times_input(pot, params, g, "lrp-eps"), rtol=1e-10)


def test_repeated_edges_are_summed_into_their_step():
    """A graph listing one edge twice (two parallel messages j → i): the block of the step
    j → i is the sum of both edges' blocks, as the masked full-graph pass sees it."""
    pot, params = make("schnet", 2)
    g = frame()
    real = np.flatnonzero(np.asarray(g.edge_mask))
    shortest = real[np.argmin(np.linalg.norm(np.asarray(edge_vectors(g))[real], axis=1))]
    twice = np.concatenate([real, [shortest], np.flatnonzero(~np.asarray(g.edge_mask))])
    doubled = Graph(g.positions, g.species, g.senders[twice], g.receivers[twice], g.node_mask,
                    g.edge_mask[twice], g.cell)
    walks = ref.all_walks(doubled, 2)
    expected = ref.walk_relevances_bruteforce(pot, params, doubled, walks, "gi")
    close(walk_relevance(pot, params, doubled, walks), expected, np.abs(expected).max())
    assert np.abs(expected - ref.walk_relevances_bruteforce(pot, params, g, walks, "gi")).max() > 1e-6


def test_step_chunks_change_no_block():
    pot, params = make("schnet", 3)
    g = frame()
    topology, _ = chain_topology(g, 3)
    whole, energy, total = chain_relevance(pot, params, g, topology, RuleSet("gi"))
    chunked, energy_c, total_c = chain_relevance(pot, params, g, topology, RuleSet("gi"), chunk_size=3)
    np.testing.assert_allclose(chunked, whole, rtol=1e-12, atol=1e-15)
    assert (energy, total) == (energy_c, total_c)


def test_frames_in_one_vmapped_call_equal_the_frame_by_frame_decomposition():
    """Three frames with different walk topologies padded to one shape: every table equals
    the single-frame decomposition, and the frame numbers are kept."""
    pot, params = make("schnet", 2)
    rng = np.random.default_rng(3)
    positions = np.asarray(frame().positions)[None] + rng.normal(scale=0.25, size=(3, len(SPECIES), 3))
    graphs = build_graphs(positions, SPECIES, CUTOFF, min_distance=0.8)
    assert len({int(np.asarray(graphs.frame(k).edge_mask).sum()) for k in range(3)}) > 1
    batched = nbody_decompositions(pot, params, graphs, max_order=3, frames=[5, 6, 7], frames_per_call=2)
    for k, nb in enumerate(batched):
        single = nbody_decomposition(pot, params, graphs.frame(k), max_order=3, frame=5 + k)
        for n, table in single.orders.items():
            np.testing.assert_array_equal(nb.orders[n].atoms, table.atoms)
            np.testing.assert_array_equal(nb.orders[n].frame, table.frame)
            close(nb.orders[n].relevance, table.relevance, np.abs(table.relevance).max())
        np.testing.assert_allclose([nb.energy, nb.total, nb.residual], [single.energy, single.total, single.residual],
                                   rtol=1e-12, atol=1e-12)
