"""The model's many-body expansion (jaxrel.relevance.mbe) against potentials whose terms are known."""

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import argon_potential, small_potential

from jaxrel.data import noble_gas as ng
from jaxrel.graph import build_graphs, pad_graph
from jaxrel.relevance import Explanation, many_body_expansion
from jaxrel.relevance.mbe import cluster_graph, frame_expansion, potential_cluster_energy

AR, KR = 18, 36
CUTOFF = 5.5


def noble_gas_cluster_energy(three_body: bool):
    """The generator's own periodic Lennard-Jones (+ ATM) energy of a set of atoms, as a "model"."""
    def energy(params, x, z, cell):
        k = z.shape[0]
        used = z > 0
        neighbours = jnp.where(used[:, None] & used[None, :] & ~np.eye(k, dtype=bool), jnp.arange(k), k)
        return ng._total_energy(x, jnp.where(used, z, AR), neighbours, jnp.diag(cell), CUTOFF, three_body)

    return energy


@pytest.fixture(scope="module")
def mixed_liquid():
    """27 Ar/Kr atoms near a 3 × 3 × 3 grid (spacing 3.9 Å) in a periodic cube of 11.7 Å."""
    rng = np.random.default_rng(4)
    grid = np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3)
    x = (grid + 0.5) * 3.9 + 0.25 * rng.normal(size=(27, 3))
    z = np.where(rng.random(27) < 0.5, AR, KR).astype(np.int32)
    return x, z, np.eye(3) * 11.7


def exact_lookup(atoms, values, query):
    table = {tuple(a): v for a, v in zip(atoms.tolist(), values)}
    return np.array([table.get(tuple(q), 0.0) for q in query.tolist()])


@pytest.mark.parametrize("three_body", [True, False])
def test_mbe_of_lennard_jones_plus_atm_returns_the_exact_pair_and_triplet_energies(mixed_liquid, three_body):
    x, z, cell = mixed_liquid
    exact = ng.decompose(x, z, cell, CUTOFF, three_body=three_body)
    graph = build_graphs(x, z, CUTOFF, cell=cell).frame(0)
    terms = frame_expansion(noble_gas_cluster_energy(three_body), None, graph, 3).orders
    np.testing.assert_allclose(terms[1].relevance, 0.0, atol=1e-14)
    assert len(terms[2]) == len(exact["pair_atoms"])
    np.testing.assert_allclose(terms[2].relevance, exact_lookup(exact["pair_atoms"], exact["pair_energy"],
                                                                terms[2].atoms), rtol=1e-10, atol=1e-14)
    expected3 = exact_lookup(exact["triplet_atoms"], exact["triplet_energy"], terms[3].atoms)
    np.testing.assert_allclose(terms[3].relevance, expected3, rtol=1e-9, atol=1e-13)
    if three_body:
        assert np.count_nonzero(expected3) > 100
    else:
        assert np.abs(terms[3].relevance).max() < 1e-13      # a pure pair potential has no 3-body terms
    total = sum(t.relevance.sum() for t in terms.values())
    assert total == pytest.approx(exact["energy"], rel=1e-10)


def test_mbe_pair_forces_obey_newtons_third_law_and_match_the_pair_energy_gradient(mixed_liquid):
    x, z, cell = mixed_liquid
    graph = build_graphs(x, z, CUTOFF, cell=cell).frame(0)
    pairs = frame_expansion(noble_gas_cluster_energy(True), None, graph, 2, forces=True).orders[2]
    np.testing.assert_allclose(pairs.forces[:, 0], -pairs.forces[:, 1], atol=1e-13)
    d = pairs.distances[:, 0]
    step = 1e-6
    dphi = (ng.pair_energy(d + step, *pairs.species.T, CUTOFF) - ng.pair_energy(d - step, *pairs.species.T, CUTOFF))
    magnitude = np.linalg.norm(pairs.forces[:, 0], axis=-1)
    np.testing.assert_allclose(magnitude, np.abs(np.asarray(dphi)) / (2 * step), rtol=1e-6, atol=1e-10)


@pytest.fixture(scope="module")
def cluster_frame():
    """A free-space O/H cluster of 4 atoms, all within the 3 Å cutoff of each other."""
    x = np.array([[0.0, 0, 0], [0.96, 0.1, 0], [-0.3, 0.9, 0.2], [0.5, 0.4, 1.1]])
    return build_graphs(x, np.array([8, 1, 1, 8]), 3.0)


@pytest.mark.parametrize("model", ["schnet", "painn", "nequip"])
def test_mbe_to_the_full_order_sums_to_the_energy_and_splits_the_forces_exactly(cluster_frame, model):
    potential, params = small_potential("float64", model=model)
    e = many_body_expansion(potential, params, cluster_frame, max_order=4, forces=True)
    shifts = -6.0 * 2 - 4.0 * 2
    assert e.species_shift[0] == shifts
    assert e.energy[0] == pytest.approx(float(potential.energy(params, cluster_frame)[0]), abs=1e-12)
    assert abs(e.higher_order_residual[0]) < 1e-12 and np.all(e.conservation_error == 0.0)
    assert sum(e.order_totals(n)[0] for n in (1, 2, 3, 4)) == pytest.approx(e.energy[0] - shifts, abs=1e-12)
    np.testing.assert_allclose(e.force_residual, 0.0, atol=1e-12)
    np.testing.assert_allclose(e.forces.sum(axis=1), 0.0, atol=1e-12)
    for n, table in e.tables.items():                         # every term is translation invariant
        np.testing.assert_allclose(table.forces.sum(axis=1), 0.0, atol=1e-12, err_msg=f"order {n}")
    assert np.abs(e.order_totals(3)).max() > 1e-6             # a message-passing model has 3-body terms


def test_truncated_mbe_residual_is_what_the_missing_orders_carry(cluster_frame):
    potential, params = small_potential("float64")
    full = many_body_expansion(potential, params, cluster_frame, max_order=4, forces=True)
    two = many_body_expansion(potential, params, cluster_frame, max_order=2, forces=True)
    for n in (1, 2):
        np.testing.assert_allclose(two.tables[n].relevance, full.tables[n].relevance, atol=1e-13)
    np.testing.assert_allclose(two.higher_order_residual, full.order_totals(3) + full.order_totals(4), atol=1e-12)
    np.testing.assert_allclose(two.force_residual[0], full.body_order_forces()[0, 2:].sum(axis=0), atol=1e-12)


def test_unused_cluster_slots_and_graph_padding_change_nothing(mixed_liquid):
    potential, params = argon_potential("schnet")
    energy = potential_cluster_energy(potential)
    x = jnp.array([[0.0, 0, 0], [3.6, 0, 0], [1.5, 3.0, 0.3]])
    z = jnp.array([AR, AR, AR])
    padded = energy(params, jnp.concatenate([x, x[:1] + 0.5]), jnp.append(z, 0), None)
    assert float(padded) == pytest.approx(float(energy(params, x, z, None)), abs=1e-13)
    assert cluster_graph(x, z, 4.0).edge_mask.sum() == 6
    xs, zs, cell = mixed_liquid
    graph = build_graphs(xs, np.full(27, AR), 4.0, cell=cell)
    plain = many_body_expansion(potential, params, graph, max_order=3)
    wide = many_body_expansion(potential, params, pad_graph(graph, 31, graph.n_edges + 40), max_order=3)
    for n in (1, 2, 3):
        np.testing.assert_array_equal(wide.tables[n].atoms, plain.tables[n].atoms)
        np.testing.assert_allclose(wide.tables[n].relevance, plain.tables[n].relevance, atol=1e-13)
    np.testing.assert_allclose(wide.higher_order_residual, plain.higher_order_residual, atol=1e-12)


def test_mbe_explanation_with_forces_round_trips_through_save_and_load(cluster_frame, tmp_path):
    potential, params = small_potential("float64")
    e = many_body_expansion(potential, params, cluster_frame, max_order=3, forces=True, frame_index=[5])
    loaded = Explanation.load(e.save(tmp_path / "mbe"))
    assert loaded.method == "mbe" and loaded.metadata["rule"] == "mbe"
    np.testing.assert_array_equal(loaded.forces, e.forces)
    for n in (1, 2, 3):
        np.testing.assert_array_equal(loaded.tables[n].forces, e.tables[n].forces)
    np.testing.assert_array_equal(loaded.body_order_forces(), e.body_order_forces())


def test_gnn_lrp_explanations_have_no_body_order_forces(cluster_frame):
    from jaxrel.relevance import explain
    potential, params = small_potential("float64")
    e = explain(potential, params, cluster_frame, max_order=2)
    assert e.method == "gnn-lrp"
    with pytest.raises(ValueError, match="no per-term forces"):
        e.body_order_forces()


def test_mbe_refuses_orders_beyond_four(cluster_frame):
    potential, params = small_potential("float64")
    with pytest.raises(ValueError, match="between 1 and 4"):
        many_body_expansion(potential, params, cluster_frame, max_order=5)


def test_mbe_of_the_body_ordered_model_equals_its_explicit_pair_and_triplet_terms(mixed_liquid):
    import jax

    from jaxrel.geometry import minimum_image
    from jaxrel.models import ModelConfig, Potential
    from jaxrel.models.potential import species_lookup

    x, z, cell = mixed_liquid
    potential, params = Potential.create(ModelConfig("bodyordered", (AR, KR), cutoff=CUTOFF, n_features=6,
                                                     n_rbf=8, dtype="float64"), {AR: -0.3, KR: -0.5}, 0.7, seed=1)
    e = many_body_expansion(potential, params, build_graphs(x, z, CUTOFF, cell=cell), max_order=4)
    net = potential.module(params).net
    index = np.asarray(species_lookup(potential.config.species, jnp.asarray(z)))
    np.testing.assert_allclose(e.tables[1].relevance, 0.0, atol=1e-13)
    pairs = e.tables[2]
    phi = jax.vmap(net.pair_term)(pairs.distances[:, 0], index[pairs.atoms[:, 0]], index[pairs.atoms[:, 1]])
    np.testing.assert_allclose(pairs.relevance, 0.7 * np.asarray(phi), rtol=1e-10, atol=1e-13)
    triplets = e.tables[3]
    expected = np.zeros(len(triplets))
    for c in range(3):                                    # each atom of the triplet as the centre
        j, k = [(c + 1) % 3, (c + 2) % 3]
        centre = x[triplets.atoms[:, c]]
        xj = centre + minimum_image(x[triplets.atoms[:, j]] - centre, cell)
        xk = centre + minimum_image(x[triplets.atoms[:, k]] - centre, cell)
        expected += 0.7 * np.asarray(jax.vmap(net.triplet_term)(centre, xj, xk, *(index[triplets.atoms[:, s]]
                                                                                 for s in (c, j, k))))
    assert np.count_nonzero(np.abs(expected) > 1e-8) > 100
    np.testing.assert_allclose(triplets.relevance, expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(e.tables[4].relevance, 0.0, atol=1e-11)   # no 4-body terms at all
    assert abs(e.higher_order_residual[0]) < 1e-10


def test_gnn_lrp_of_the_body_ordered_model_points_to_its_many_body_expansion(cluster_frame):
    from jaxrel.models import ModelConfig, Potential
    from jaxrel.relevance import explain

    potential, params = Potential.create(ModelConfig("bodyordered", (1, 8), cutoff=3.0, n_features=4, n_rbf=4,
                                                     dtype="float64"))
    assert not potential.has_layers and small_potential()[0].has_layers
    with pytest.raises(ValueError, match="explain it with its many-body expansion"):
        explain(potential, params, cluster_frame, max_order=2)
    assert len(many_body_expansion(potential, params, cluster_frame, max_order=2).tables[2]) == 6
