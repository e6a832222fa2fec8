"""Top-K relevant walks by best-first (max-product) search equal full enumeration.

``top_k_walks`` grows walk suffixes from the readout down and prunes suffixes whose
admissible bound ‖c‖·M_t(i_t) is below the k-th best |R| (Xiong et al., ICML 2023).
Compared here with :func:`walk_relevance` over :func:`enumerate_walks`, float64.
"""


import numpy as np
import pytest

from jaxrel.graph import build_graphs
from jaxrel.models import ModelConfig, Potential
from jaxrel.relevance import enumerate_walks, top_k_walks, walk_relevance
from jaxrel.relevance.walks import _suffix_bound

SPECIES = np.array([6, 8, 1, 1, 6, 1, 1, 8, 1, 6, 1, 1])
CUTOFF = 2.4
KS = [1, 5, 20]
STATS: dict = {}


def frame():
    """12 atoms at random, at least 0.9 Å apart, in a 4.5 Å box (no cell)."""
    rng = np.random.default_rng(3)
    pos = []
    while len(pos) < len(SPECIES):
        x = rng.uniform(0, 4.5, size=3)
        if all(np.linalg.norm(x - y) >= 0.9 for y in pos):
            pos.append(x)
    return build_graphs(np.array(pos), SPECIES, CUTOFF).frame(0)


@pytest.fixture(scope="module", params=[(m, t) for m in ["schnet", "painn"] for t in [2, 3]] + [("nequip", 2)],
                ids=lambda p: f"{p[0]}-T{p[1]}")
def case(request):
    model, T = request.param
    config = ModelConfig(model, (1, 6, 8), cutoff=CUTOFF, n_features=8, n_interactions=T,
                         n_rbf=6, dtype="float64")
    pot, params = Potential.create(config, {1: -0.5, 6: -37.8, 8: -75.0}, energy_scale=0.3, seed=2)
    g = frame()
    walks = enumerate_walks(g, T)
    relevance = walk_relevance(pot, params, g, walks)
    return request.param, pot, params, g, walks, relevance


@pytest.mark.parametrize("k", KS)
def test_search_equals_enumeration(case, k):
    name, pot, params, g, walks, relevance = case
    got_walks, got_r, stats = top_k_walks(pot, params, g, k, return_stats=True)
    assert got_walks.shape == (k, walks.shape[1]) and got_walks.dtype == np.int32
    assert got_r.shape == (k,)
    order = np.argsort(-np.abs(relevance), kind="stable")
    np.testing.assert_allclose(np.abs(got_r), np.abs(relevance[order[:k]]), rtol=1e-8)
    assert (np.diff(np.abs(got_r)) <= 0).all()
    lookup = dict(zip(map(tuple, walks.tolist()), relevance))
    np.testing.assert_allclose(got_r, [lookup[tuple(w)] for w in got_walks.tolist()], rtol=1e-8)
    mags = np.abs(relevance[order])
    if k < len(mags) and mags[k - 1] - mags[k] > 1e-9 * mags[0]:
        assert set(map(tuple, got_walks.tolist())) == set(map(tuple, walks[order[:k]].tolist()))
    assert stats["walks_total"] == len(walks)
    assert 0 < stats["walks_scored"] <= stats["walks_total"]
    assert stats["backward_passes"] > 0
    STATS[(name, k)] = stats
    print(name, k, stats)


def test_search_scores_fewer_walks_than_enumeration():
    # runs after the parametrised cases above (file order); recompute one if run alone
    if not STATS:
        config = ModelConfig("schnet", (1, 6, 8), cutoff=CUTOFF, n_features=8, n_interactions=3,
                             n_rbf=6, dtype="float64")
        pot, params = Potential.create(config, energy_scale=0.3, seed=2)
        STATS[("schnet", 1)] = top_k_walks(pot, params, frame(), 1, return_stats=True)[2]
    assert any(s["walks_scored"] < s["walks_total"] for s in STATS.values()), STATS


@pytest.mark.parametrize("model", ["schnet", "painn"])
def test_bound_is_admissible_for_every_partial_suffix(model):
    T = 3
    config = ModelConfig(model, (1, 6, 8), cutoff=CUTOFF, n_features=8, n_interactions=T,
                         n_rbf=6, dtype="float64")
    pot, params = Potential.create(config, {1: -0.5, 6: -37.8, 8: -75.0}, energy_scale=0.3, seed=2)
    g = frame()
    walks = enumerate_walks(g, T)
    relevance = np.abs(walk_relevance(pot, params, g, walks))
    rng = np.random.default_rng(0)
    for length in (2, 3):  # suffixes (i_2, i_3) and (i_1, i_2, i_3)
        suffixes = np.unique(walks[:, T + 1 - length:], axis=0)
        if len(suffixes) > 40:
            suffixes = suffixes[rng.choice(len(suffixes), 40, replace=False)]
        for s in suffixes:
            completions = (walks[:, T + 1 - length:] == s).all(axis=1)
            bound = _suffix_bound(pot, params, g, s)
            assert bound >= relevance[completions].max() * (1 - 1e-12), (s, bound)
