"""The repulsive pair prior of coarse-grained potentials: its forces, its fit, its checkpoint
and its exact 2-body column in every explanation (float64). Force matching with the prior
through ``jaxrel train`` is tested with the interruption in ``test_bad_input.py``."""

import jax
import numpy as np
import pytest

from jaxrel.analysis.write import write_analysis
from jaxrel.checkpoint import load_checkpoint, save_checkpoint
from jaxrel.graph import build_graphs
from jaxrel.models import ModelConfig, Potential
from jaxrel.models.prior import EXPONENT, fit_repulsive_prior, repulsive_energy
from jaxrel.relevance import explain, many_body_expansion

SIGMA, EPSILON, CUTOFF = 3.2, 0.05, 5.0


def prior_potential(energy_scale: float, seed: int = 0):
    """A float64 SchNet for species 18 with the prior σ = 3.2 Å, ε = 0.05 eV; ``energy_scale`` 0
    switches the network off, leaving the prior alone."""
    config = ModelConfig("schnet", (18,), cutoff=CUTOFF, n_features=8, n_interactions=2, n_rbf=8,
                         dtype="float64", prior="repulsive")
    return Potential.create(config, energy_scale=energy_scale, seed=seed,
                            prior=(np.full((1, 1), SIGMA), np.full((1, 1), EPSILON)))


@pytest.fixture(scope="module")
def frame():
    """10 beads in a periodic 10.5 Å box, no two closer than 2.7 Å: many pairs inside the repulsion."""
    rng, side, points = np.random.default_rng(3), 10.5, []
    while len(points) < 10:
        x = rng.uniform(0, side, 3)
        d = np.array(points) - x if points else np.zeros((0, 3))
        if np.all(np.linalg.norm(d - side * np.round(d / side), axis=-1) > 2.7):
            points.append(x)
    return np.array(points)[None], np.full(10, 18), np.eye(3) * side


def test_prior_forces_are_minus_the_finite_difference_gradient_and_sum_to_zero(frame):
    positions, species, cell = frame
    pot, params = prior_potential(energy_scale=0.0)
    graph = build_graphs(positions, species, CUTOFF, cell=cell).astype("float64").frame(0)
    energy, forces = jax.jit(pot.energy_and_forces)(params, graph)
    assert abs(float(energy)) > 1e-6                     # some pair sits inside the repulsion
    energy_at = jax.jit(lambda x: pot.energy(params, graph._replace(positions=x)))
    h = 1e-5
    for atom, axis in [(0, 0), (3, 1), (5, 2)]:
        shifted = []
        for sign in (1, -1):
            x = np.array(graph.positions)
            x[atom, axis] += sign * h
            shifted.append(float(energy_at(x)))
        assert float(forces[atom, axis]) == pytest.approx(-(shifted[0] - shifted[1]) / (2 * h), rel=1e-6, abs=1e-9)
    np.testing.assert_allclose(np.asarray(forces).sum(0), 0.0, atol=1e-12)


def test_prior_is_zero_beyond_the_cutoff_and_equals_eps_sigma_over_r_to_12_inside():
    r = np.array([2.5, 3.2, 4.0, 5.0, 6.0])
    phi = np.asarray(repulsive_energy(r, SIGMA, EPSILON, CUTOFF))
    expected = EPSILON * (SIGMA / r) ** 12 * 0.5 * (np.cos(np.pi * r / CUTOFF) + 1) * (r < CUTOFF)
    np.testing.assert_allclose(phi, expected, rtol=1e-12)
    assert phi[3] == phi[4] == 0.0


def test_fit_puts_sigma_at_the_closest_approach_and_the_force_there_at_the_force_rms(frame):
    positions, species, cell = frame
    graph = build_graphs(positions, species, CUTOFF, cell=cell)
    sigma, epsilon = fit_repulsive_prior(graph, (18,), force_rms=0.3)
    d = positions[0][:, None] - positions[0][None]
    frac = d @ np.linalg.inv(cell)
    r = np.linalg.norm((frac - np.round(frac)) @ cell, axis=-1)
    assert sigma[0, 0] == pytest.approx(r[np.triu_indices(10, 1)].min(), rel=1e-12)
    assert EXPONENT * epsilon[0, 0] / sigma[0, 0] == pytest.approx(0.3)


def test_a_model_whose_prior_alone_is_a_pair_potential_has_2_body_terms_equal_to_the_prior(frame):
    positions, species, cell = frame
    pot, params = prior_potential(energy_scale=0.0)
    graph = build_graphs(positions, species, CUTOFF, cell=cell).astype("float64")
    for decomposition in (explain(pot, params, graph, max_order=3),
                          many_body_expansion(pot, params, graph, max_order=3)):
        pairs = decomposition.tables[2]
        expected = EPSILON * (SIGMA / pairs.distances[:, 0]) ** 12 * 0.5 * (
            np.cos(np.pi * pairs.distances[:, 0] / CUTOFF) + 1)
        np.testing.assert_allclose(pairs.relevance, expected, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(pairs.prior, expected, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(decomposition.tables[3].relevance, 0.0, atol=1e-12)
        np.testing.assert_allclose(decomposition.tables[1].relevance, 0.0, atol=1e-12)
        np.testing.assert_allclose(decomposition.conservation_error, 0.0, atol=1e-12)


def test_explanations_of_a_network_with_a_prior_conserve_and_list_the_prior_apart(frame, tmp_path):
    positions, species, cell = frame
    pot, params = prior_potential(energy_scale=0.5, seed=1)
    graph = build_graphs(positions, species, CUTOFF, cell=cell).astype("float64")
    gnn_lrp = explain(pot, params, graph, max_order=3)
    mbe = many_body_expansion(pot, params, graph, max_order=3)
    prior_total = float(pot.prior_energy(params, graph.frame(0)))
    for e in (gnn_lrp, mbe):
        assert e.tables[2].prior.sum() == pytest.approx(prior_total, rel=1e-12)
        np.testing.assert_allclose(e.conservation_error, 0.0, atol=1e-10)   # GI: no absorbed relevance
    network = gnn_lrp.tables[2].relevance - gnn_lrp.tables[2].prior
    assert np.abs(network).max() > 1e-6                                      # the network's own part
    loaded = type(gnn_lrp).load(gnn_lrp.save(tmp_path / "x"))
    np.testing.assert_array_equal(loaded.tables[2].prior, gnn_lrp.tables[2].prior)
    written = write_analysis(loaded, tmp_path / "figures")
    curves = written.results["pair_curves_network"][(18, 18)]
    with_prior = written.results["pair_curves"][(18, 18)]
    assert written.figures["pair_curves_network"].is_file()
    assert np.nanmax(with_prior.mean - curves.mean) > 0       # the repulsion lifts the curve at short range


def test_a_checkpoint_keeps_the_prior_and_reloads_the_same_energy(frame, tmp_path):
    positions, species, cell = frame
    pot, params = prior_potential(energy_scale=0.5, seed=2)
    save_checkpoint(tmp_path / "m", pot, params)
    loaded, loaded_params, _ = load_checkpoint(tmp_path / "m")
    graph = build_graphs(positions, species, CUTOFF, cell=cell).astype("float64").frame(0)
    assert loaded.config.prior == "repulsive"
    np.testing.assert_array_equal(np.asarray(loaded.module(loaded_params).prior_sigma[...]), [[SIGMA]])
    assert float(loaded.energy(loaded_params, graph)) == float(pot.energy(params, graph))
