"""Stability diagnostics (jaxrel.analysis.diagnostics) on constructed models whose answer is known.

* A pair potential written by hand, φ(r) = Morse(r) with and without a spurious Gaussian well
  at 0.6 Å: its MBE dimer curve is φ itself, so the inner well and the inner attraction have
  closed forms on the grid.
* A linear one-interaction SchNet is a pure pair potential whose GI 2-body relevance equals its
  φ (tests/test_pair_potential_exact.py): the GNN-LRP and MBE dimer curves must coincide, and a
  fixed pair prior with ε < 0 (a sink) or ε > 0 (a wall) decides the wells.
* The relevance dimer curve equals the 2-body table of :func:`jaxrel.relevance.explain` on a
  dimer frame (an independent path through the engine).
float64 throughout (conftest enables it).
"""

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import argon_potential
from test_pair_potential_exact import liquid_frame, pair_model

from jaxrel.analysis.diagnostics import (DEFINITIONS, N_INNER, dimer_curves, dimer_distances, ensemble_diagnostics,
                                         inner_attraction, inner_well, partial_spearman, predictive_power,
                                         reference_min_distances, roc_auc, stability_diagnostics)
from jaxrel.analysis.faithfulness import decompose
from jaxrel.graph import build_graphs, edge_lengths
from jaxrel.models import ModelConfig, Potential
from jaxrel.models.potential import EnergyModel
from jaxrel.relevance import explain

SPECIES = np.array([18, 36, 18, 18, 36, 18, 36, 18])


def morse(r, spurious: bool):
    """Morse pair energy (D = 1 eV, a = 2 / Å, r_e = 1.1 Å), minus a 2 eV Gaussian well at 0.6 Å if ``spurious``."""
    phi = (1 - jnp.exp(-2.0 * (r - 1.1))) ** 2 - 1.0
    return phi - 2.0 * jnp.exp(-((r - 0.6) / 0.05) ** 2 / 2) if spurious else phi


@dataclass(frozen=True)
class _Config:
    cutoff: float = 4.0
    dtype: str = "float64"


@dataclass(frozen=True)
class HandPairPotential:
    """E = Σ_{i<j} φ(r_ij) (+ 0.3 eV per atom) of :func:`morse`; duck-typed like a Potential."""

    spurious: bool
    config: _Config = _Config()
    has_layers: bool = False

    def check_species(self, species):
        pass

    def energy(self, params, graph):
        _, r = edge_lengths(graph)
        phi = jnp.where(graph.edge_mask, morse(jnp.where(graph.edge_mask, r, 1.0), self.spurious), 0.0)
        return 0.5 * phi.sum() + 0.3 * graph.node_mask.sum()


@pytest.mark.parametrize("spurious", [False, True])
def test_mbe_dimer_curve_of_a_hand_written_pair_potential_is_its_pair_energy(spurious):
    potential = HandPairPotential(spurious)
    curves = dimer_curves(potential, None, {(1, 1): 0.9}, rules="gi")
    c = curves[(1, 1)]
    assert c.relevance is None and c.reference_min_A == 0.9
    np.testing.assert_allclose(c.distance, dimer_distances(0.9, 4.0))
    phi = np.where(c.distance < 4.0, np.asarray(morse(c.distance, spurious)), 0.0)   # no edge at the cutoff
    np.testing.assert_allclose(c.mbe, phi, rtol=1e-12, atol=1e-12)
    inner = phi[:N_INNER]
    expected_well = max(inner[j] - inner[i] for i in range(N_INNER) for j in range(i, N_INNER))
    assert inner_well(c.mbe) == pytest.approx(expected_well, abs=1e-12)
    if spurious:           # the well at 0.6 Å holds a pair behind a barrier of about 0.3 eV
        assert 0.2 < inner_well(c.mbe) < 0.5 and 0.05 < inner_attraction(c.distance, c.mbe) < 0.3
    else:                  # Morse only rises inwards below r_e
        assert inner_well(c.mbe) == 0.0 and inner_attraction(c.distance, c.mbe) == 0.0


def test_diagnostics_of_the_hand_written_models_separate_the_spurious_minimum():
    frames = np.array([[[0, 0, 0], [0.95, 0, 0], [0, 1.2, 0]]], float)
    species = np.array([1, 1, 1])
    good, bad = (stability_diagnostics(HandPairPotential(s), None, frames, species) for s in (False, True))
    assert good.values["mbe_inner_well_eV"] == 0.0 and bad.values["mbe_inner_well_eV"] > 0.2
    assert good.rule is None and good.values["relevance_inner_well_eV"] is None
    assert set(good.values) == set(DEFINITIONS) and good.curves[(1, 1)].reference_min_A == pytest.approx(0.95)


def prior_pair_model(epsilon: float) -> tuple[Potential, nnx.State]:
    """The linear pair SchNet of test_pair_potential_exact with a fixed prior ε (σ/r)^12 f_c(r), σ = 2.5 Å."""
    linear, linear_params = pair_model(linear=True)
    config = ModelConfig("schnet", (18, 36), cutoff=5.0, n_features=16, n_interactions=1, n_rbf=12,
                         dtype="float64", prior="repulsive")
    model = EnergyModel(config, {18: -0.7, 36: -1.3}, energy_scale=0.05,
                        prior=(np.full((2, 2), 2.5), np.full((2, 2), epsilon)), rngs=nnx.Rngs(3))
    model.net.interactions[0].f2out.activation = lambda x: x
    model.net.readout.activation = lambda x: x
    graphdef, params = nnx.split(model)
    return Potential(config, graphdef), params


@pytest.mark.parametrize("epsilon", [-5.0, 5.0])
def test_a_prior_sink_is_flagged_by_both_dimer_diagnostics_and_a_prior_wall_by_neither(epsilon):
    """The network is a pair potential, so its GI dimer relevance equals its MBE dimer curve, prior included."""
    potential, params = prior_pair_model(epsilon)
    positions = np.random.default_rng(0).uniform(0, 1, (2, 8, 3)) * 0.2 + 3.0 * np.arange(8)[None, :, None]
    d = stability_diagnostics(potential, params, positions, SPECIES)
    for c in d.curves.values():
        np.testing.assert_allclose(c.relevance, c.mbe, rtol=1e-8, atol=1e-10)
    if epsilon < 0:
        assert d.values["mbe_inner_well_eV"] > 1.0 and d.values["relevance_inner_well_eV"] > 1.0
        assert d.values["mbe_inner_attraction"] > 0.9
    else:
        assert d.values["mbe_inner_well_eV"] == 0.0 == d.values["relevance_inner_well_eV"]
        assert d.values["mbe_inner_attraction"] == 0.0


def test_relevance_dimer_curve_equals_the_engines_two_body_term_of_a_dimer_frame():
    potential, params = argon_potential("schnet")
    r = np.array([1.0, 2.2, 3.1])
    curves = dimer_curves(potential, params, {(18, 18): 3.0}, rules="gi")
    c = curves[(18, 18)]
    k = np.searchsorted(c.distance, r)
    frames = np.zeros((3, 2, 3))
    frames[:, 1, 0] = c.distance[k]
    e = explain(potential, params, build_graphs(frames, np.array([18, 18]), potential.config.cutoff),
                max_order=2, rules="gi")
    np.testing.assert_allclose(e.tables[2].relevance, c.relevance[k], rtol=1e-9, atol=1e-12)


def test_three_body_shares_vanish_for_a_pair_potential_network_and_not_for_schnet():
    positions = liquid_frame()[None]
    pair, pair_params = pair_model(linear=True)
    graph = build_graphs(positions, SPECIES, 5.0).astype("float64")
    d = stability_diagnostics(pair, pair_params, positions, SPECIES,
                              explanations=decompose(pair, pair_params, graph, max_order=3, rules=(), forces=False))
    assert d.values["mbe_three_body_share"] < 1e-12 and d.values["mbe_higher_order_share"] < 1e-12
    schnet, params = argon_potential("schnet")
    species = np.full(8, 18)
    graph = build_graphs(positions, species, schnet.config.cutoff).astype("float64")
    d = stability_diagnostics(schnet, params, positions, species,
                              explanations=decompose(schnet, params, graph, max_order=3, rules=("gi",), forces=False))
    assert d.values["mbe_three_body_share"] > 1e-4 and d.values["relevance_three_body_share"] > 1e-4
    assert d.values["decay_length_A"] is None or d.values["decay_length_A"] > 0


def test_reference_min_distances_equal_a_brute_force_minimum_image_search():
    rng = np.random.default_rng(4)
    positions = rng.uniform(0, 9.0, (5, 8, 3))
    cells = np.stack([np.diag([9.0, 9.5, 10.0]) + 0.1 * k for k in range(5)])
    got = reference_min_distances(positions, SPECIES, cells, chunk=2)
    expected = {}
    for f in range(5):
        inv = np.linalg.inv(cells[f])
        for i in range(8):
            for j in range(i + 1, 8):
                d = positions[f, j] - positions[f, i]
                frac = d @ inv
                r = np.linalg.norm((frac - np.round(frac)) @ cells[f])
                key = tuple(sorted((SPECIES[i], SPECIES[j])))
                expected[key] = min(expected.get(key, np.inf), r)
    assert got.keys() == expected.keys()
    for key in got:
        assert got[key] == pytest.approx(expected[key], rel=1e-12)
    assert reference_min_distances(positions, SPECIES, cells[0]) != got    # one cell for all frames differs
    with pytest.raises(ValueError, match="at least two atoms"):
        reference_min_distances(positions[:, :1], SPECIES[:1])


def test_dimer_curves_refuse_a_reference_distance_outside_the_grid():
    with pytest.raises(ValueError, match="between 0.35 Å and the cutoff"):
        dimer_curves(HandPairPotential(False), None, {(1, 1): 4.5})


def test_roc_auc_equals_the_fraction_of_correctly_ordered_pairs():
    rng = np.random.default_rng(2)
    score = np.round(rng.normal(size=40), 1)          # rounded: ties occur
    unstable = rng.uniform(size=40) < 0.4
    pairs = score[unstable][:, None] - score[~unstable][None, :]
    expected = np.mean((pairs > 0) + 0.5 * (pairs == 0))
    assert roc_auc(score, unstable) == pytest.approx(expected, rel=1e-12)
    assert roc_auc(np.arange(6.0), np.arange(6) >= 3) == 1.0
    with pytest.raises(ValueError, match="unstable and stable"):
        roc_auc(score, np.ones(40, bool))


def test_predictive_power_picks_the_direction_in_sample_and_keeps_a_given_one():
    time = np.array([0.5, 1.0, 2.0, 5.0, 5.0, 5.0])
    unstable = time < 5.0
    well = np.array([3.0, 2.0, 1.0, 0.1, 0.0, 0.2])          # deeper wells fail sooner
    p = predictive_power(well, time, unstable)
    assert (p.direction, p.auc, p.n, p.n_unstable) == (1, 1.0, 6, 3)
    assert p.spearman < -0.8
    flipped = predictive_power(-well, time, unstable)
    assert flipped.direction == -1 and flipped.auc == 1.0
    held = predictive_power(-well, time, unstable, direction=1)       # a direction learnt elsewhere
    assert held.auc == 0.0
    missing = predictive_power(np.where(np.arange(6) == 4, np.nan, well), time, unstable)
    assert missing.n == 5


def test_ensemble_diagnostics_average_the_seeds_and_spread_only_the_dimer_values():
    models = [argon_potential("schnet"), argon_potential("schnet")]
    models[1] = (models[1][0], jax_scale(models[1][1], 1.2))
    positions = np.random.default_rng(0).uniform(0, 1, (2, 8, 3)) * 0.2 + 3.0 * np.arange(8)[None, :, None]
    species = np.full(8, 18)
    members = [stability_diagnostics(p, q, positions, species) for p, q in models]
    mean, spread = ensemble_diagnostics(models, positions, species)
    for name in ("mbe_inner_well_eV", "relevance_inner_well_eV", "mbe_inner_attraction"):
        values = [m.values[name] for m in members]
        assert mean.values[name] == pytest.approx(np.mean(values))
        assert spread[name] == pytest.approx(np.std(values, ddof=1))
    assert spread["decay_length_A"] is None
    np.testing.assert_allclose(mean.curves[(18, 18)].mbe,
                               (members[0].curves[(18, 18)].mbe + members[1].curves[(18, 18)].mbe) / 2)
    with pytest.raises(ValueError, match="no models"):
        ensemble_diagnostics([], positions, species)


def jax_scale(params, factor):
    import jax

    return jax.tree.map(lambda x: x * factor if jnp.issubdtype(x.dtype, jnp.floating) else x, params)


def test_partial_spearman_equals_the_correlation_of_rank_residuals_and_removes_a_confounder():
    from scipy.stats import rankdata

    rng = np.random.default_rng(5)
    z = rng.normal(size=60)
    x, y = z + 0.5 * rng.normal(size=60), -z + 0.5 * rng.normal(size=60)     # both driven by z only
    rx, ry, rz = (rankdata(a) for a in (x, y, z))

    def residual(a):
        return a - np.polyval(np.polyfit(rz, a, 1), rz)

    expected = np.corrcoef(residual(rx), residual(ry))[0, 1]
    assert partial_spearman(x, y, z) == pytest.approx(expected, rel=1e-10)
    assert abs(partial_spearman(x, y, z)) < 0.3 < abs(predictive_power(x, y, y < 0).spearman)
    p = predictive_power(x, y, y < 0, control=z)
    assert p.partial_spearman == pytest.approx(expected, rel=1e-10)
    assert np.isnan(partial_spearman(x, y, np.ones(60)))


def test_decay_length_is_the_longest_over_species_pairs_of_an_exponential_pair_relevance():
    from types import SimpleNamespace

    from jaxrel.relevance import Table

    rng = np.random.default_rng(3)
    r = rng.uniform(1.0, 4.0, 4000)
    species = np.where(np.arange(4000)[:, None] % 2 == 0, [1, 1], [1, 8])
    decay = np.where(species[:, 1] == 1, 0.8, 1.6)             # H–H decays over 0.8 Å, H–O over 1.6 Å
    table = Table(frame=np.zeros(4000), atoms=np.tile([0, 1], (4000, 1)), species=species,
                  relevance=-2.0 * np.exp(-r / decay), distances=r[:, None])
    frames = np.array([[[0, 0, 0], [0.95, 0, 0], [0, 1.2, 0]]], float)
    d = stability_diagnostics(HandPairPotential(False), None, frames, np.array([1, 1, 8]),
                              explanations={"gi": SimpleNamespace(tables={2: table})})
    assert d.values["decay_length_A"] == pytest.approx(1.6, rel=0.02)
    assert d.values["mbe_three_body_share"] is None and d.values["relevance_three_body_share"] is None
