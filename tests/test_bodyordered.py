"""The body-ordered potential: its energy is exactly shifts + scale · (pair + triplet sums),
it has the physics of every model (invariance, equivariance, Σ F = 0, smooth cutoff,
padding), it has no layers for GNN-LRP, and it trains, runs MD and drives the ASE
calculator. float64 throughout (conftest enables it).
"""

import itertools
import json
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import argon_potential, assert_conserves, assert_invariant, liquid, small_potential
from jaxrel.calculator import JaxrelCalculator
from jaxrel.checkpoint import load_checkpoint
from jaxrel.cli import main
from jaxrel.graph import build_graphs, pad_graph
from jaxrel.md import MDConfig, simulate
from jaxrel.models import ModelConfig, Potential
from jaxrel.models.potential import species_lookup

SPECIES = np.array([6, 8, 1, 1, 6, 1, 8])
CUTOFF = 3.0


def make():
    config = ModelConfig("bodyordered", (1, 6, 8), cutoff=CUTOFF, n_features=8, n_interactions=1,
                         n_rbf=8, dtype="float64")
    return Potential.create(config, {1: -0.5, 6: -37.8, 8: -75.0}, energy_scale=0.3, seed=1)


@pytest.fixture(scope="module")
def potential():
    return make()


@pytest.fixture(scope="module")
def jitted(potential):
    """The potential's ``energy``, ``atomwise_energy`` and ``energy_and_forces``, each jitted once
    (the physics assertions call them many times on graphs of one shape)."""
    pot, params = potential
    methods = {name: jax.jit(getattr(pot, name)) for name in ("energy", "atomwise_energy", "energy_and_forces")}
    return SimpleNamespace(**methods), params


def cluster(n, radius, seed=0, min_distance=0.8):
    """``n`` atoms uniformly in a ball of ``radius`` Å, no two closer than ``min_distance`` Å."""
    rng = np.random.default_rng(seed)
    positions = np.zeros((0, 3))
    while len(positions) < n:
        x = rng.normal(size=3)
        x *= radius * rng.uniform() ** (1 / 3) / np.linalg.norm(x)
        if all(np.linalg.norm(positions - x, axis=1) > min_distance):
            positions = np.vstack([positions, x])
    return positions


def molecule(n_frames=2, seed=0):
    base = cluster(len(SPECIES), 2.2, seed)
    return base + 0.05 * np.random.default_rng(seed).normal(size=(n_frames, len(SPECIES), 3))


def explicit_energies(pot, params, positions, species):
    """Atomwise energies (eV) e_{Z_i} + scale · (½ Σ_j φ_ij + Σ_{j<k} ψ_i(j, k)) summed term by
    term from ``pair_term`` and ``triplet_term``, and the pair and triplet totals (dimensionless)."""
    model = pot.module(params)
    net, scale = model.net, float(model.scale[...])
    x = jnp.asarray(positions)
    z = species_lookup(pot.config.species, jnp.asarray(species))
    n = len(species)
    i, j = (np.array(a) for a in zip(*itertools.combinations(range(n), 2)))
    phi = jax.jit(jax.vmap(net.pair_term))(jnp.linalg.norm(x[i] - x[j], axis=-1), z[i], z[j])
    centre, a, b = (np.array(t) for t in zip(*[(c, p, q) for c in range(n)
                                                 for p, q in itertools.combinations(range(n), 2)
                                                 if c not in (p, q)]))
    psi = jax.jit(jax.vmap(net.triplet_term))(x[centre], x[a], x[b], z[centre], z[a], z[b])
    y = 0.5 * (np.bincount(i, phi, n) + np.bincount(j, phi, n)) + np.bincount(centre, psi, n)
    shifts = pot.species_shifts(params)
    return np.array([shifts[int(s)] for s in species]) + scale * y, float(phi.sum()), float(psi.sum())


@pytest.mark.parametrize("radius, all_within", [(1.3, True), (3.5, False)])
def test_energy_equals_shifts_plus_scale_times_explicit_pair_and_triplet_sums(potential, jitted, radius,
                                                                              all_within):
    """E = Σ_i e_{Z_i} + scale · (Σ_{i<j} φ_ij + Σ_i Σ_{j<k} ψ_i(j, k)), atom by atom, to 1e-10:
    the O(edges) angular-moment evaluation equals the explicit triplet sum."""
    pot, params = potential
    model, _ = jitted
    species = SPECIES[:5]
    positions = cluster(5, radius, seed=4)
    r = np.linalg.norm(positions[:, None] - positions[None], axis=-1)[np.triu_indices(5, 1)]
    assert (r < CUTOFF).all() == all_within
    graph = build_graphs(positions, species, CUTOFF).frame(0)
    expected, pairs, triplets = explicit_energies(pot, params, positions, species)
    assert abs(pairs) > 1e-3 and abs(triplets) > 1e-4  # both terms contribute
    np.testing.assert_allclose(model.atomwise_energy(params, graph), expected, rtol=0, atol=1e-10)
    np.testing.assert_allclose(model.energy(params, graph), expected.sum(), rtol=0, atol=1e-10)


def test_three_body_part_vanishes_for_fewer_than_two_neighbours(potential, jitted):
    """An isolated atom has energy e_Z and a dimer e_a + e_b + scale · φ(r), to rounding."""
    model, params = jitted
    module = potential[0].module(params)
    scale, net = float(module.scale[...]), module.net
    atom = build_graphs(np.zeros((1, 3)), np.array([8]), CUTOFF).frame(0)
    assert float(model.energy(params, atom)) == -75.0
    dimer = build_graphs(np.array([[0.0, 0, 0], [0.3, 1.1, -0.4]]), np.array([6, 8]), CUTOFF).frame(0)
    phi = net.pair_term(jnp.linalg.norm(jnp.array([0.3, 1.1, -0.4])), 1, 2)
    np.testing.assert_allclose(model.energy(params, dimer), -37.8 - 75.0 + scale * phi, rtol=0, atol=1e-12)
    assert abs(phi) > 1e-3


def test_pair_term_is_symmetric_in_species_and_zero_beyond_the_cutoff(potential):
    pot, params = potential
    net = pot.module(params).net
    r = jnp.array([0.9, 1.7, 2.6, CUTOFF, CUTOFF + 0.4])
    for a, b in [(0, 1), (1, 2), (0, 2)]:
        ab = jax.vmap(net.pair_term, in_axes=(0, None, None))(r, a, b)
        ba = jax.vmap(net.pair_term, in_axes=(0, None, None))(r, b, a)
        np.testing.assert_array_equal(ab, ba)
        np.testing.assert_array_equal(ab[3:], 0.0)
        assert np.abs(ab[:3]).min() > 0


def test_triplet_term_is_symmetric_in_its_neighbours_and_zero_beyond_the_cutoff(potential):
    pot, params = potential
    net = pot.module(params).net
    x = jnp.asarray(cluster(3, 1.3, seed=2))
    jk = net.triplet_term(x[0], x[1], x[2], 1, 0, 2)
    np.testing.assert_allclose(net.triplet_term(x[0], x[2], x[1], 1, 2, 0), jk, rtol=1e-14)
    assert abs(jk) > 1e-6
    far = x[0] + jnp.array([CUTOFF, 0.0, 0.0])
    assert net.triplet_term(x[0], x[1], far, 1, 0, 2) == 0.0


def test_energy_and_atomwise_energies_are_invariant_and_forces_equivariant(jitted):
    """Rotation + translation and permutation, on a padded frame with overlapping junk padding."""
    pot, params = jitted
    g = build_graphs(molecule(), SPECIES, CUTOFF)
    padded = pad_graph(g, g.n_atoms + 3, g.n_edges + 8)
    padded = padded._replace(positions=padded.positions.at[:, g.n_atoms:].set(0.3))
    _, f = pot.energy_and_forces(params, padded.frame(0))
    assert np.abs(f).max() > 1e-3
    assert_invariant(pot, params, padded.frame(0), seed=3)


def test_forces_sum_to_zero_and_match_finite_differences(jitted):
    pot, params = jitted
    assert_conserves(pot, params, build_graphs(molecule(), SPECIES, CUTOFF), n_checks=4)


def test_periodic_energy_is_invariant_and_conserves(jitted):
    pot, params = jitted
    rng = np.random.default_rng(5)
    cell = np.diag([6.5, 7.0, 6.2])
    pos = rng.uniform(0, 6.0, size=(len(SPECIES), 3))
    g = build_graphs(pos, SPECIES, CUTOFF, cell=cell).frame(0)
    shifted = build_graphs(pos + rng.integers(-2, 3, size=pos.shape) @ cell, SPECIES, CUTOFF, cell=cell)
    np.testing.assert_allclose(pot.energy(params, shifted)[0], pot.energy(params, g), rtol=1e-12)
    assert_invariant(pot, params, g, seed=5)
    assert_conserves(pot, params, g)


@pytest.mark.parametrize("term", ["pair", "triplet"])
def test_energy_and_force_go_to_zero_continuously_as_a_pair_crosses_the_cutoff(jitted, term):
    """Atom 2 leaves atom 0 along −x: for ``pair`` the others are beyond the cutoff, so only
    φ_02 changes; for ``triplet`` atom 1 sits 1.5 Å from atom 0 on +x, so ψ_0(1, 2) goes to 0
    as well (r_12 > r_c already). Beyond the cutoff the edge is gone from the graph."""
    pot, params = jitted
    x1 = 1.5 if term == "triplet" else 6.0
    species = np.array([6, 8, 1])

    def energy_force(r, list_cutoff):
        pos = np.array([[0.0, 0, 0], [x1, 0.2, 0], [-r, 0, 0]])
        e, f = pot.energy_and_forces(params, build_graphs(pos, species, list_cutoff))
        return float(e[0]), float(f[0, 2, 0])

    e_far, f_far = energy_force(CUTOFF + 0.3, CUTOFF)
    assert f_far == 0.0
    for delta in (1e-2, 1e-3):
        e, f = energy_force(CUTOFF - delta, CUTOFF + 0.5)
        # cosine cutoff: E − E(∞) = O(δ²) and F = O(δ) as r → r_c from below
        assert abs(e - e_far) < 50 * delta ** 2
        assert abs(f) < 50 * delta
    e_in, _ = energy_force(CUTOFF - 0.8, CUTOFF + 0.5)
    assert abs(e_in - e_far) > 1e-4  # atom 2 does interact inside the cutoff


def test_padding_changes_no_energy_force_or_atomwise_energy(jitted):
    pot, params = jitted
    g = build_graphs(molecule(), SPECIES, CUTOFF)
    padded = pad_graph(g, g.n_atoms + 5, g.n_edges + 17)
    padded = padded._replace(positions=padded.positions.at[:, g.n_atoms:].set(0.3))
    e1, f1 = pot.energy_and_forces(params, g)
    e2, f2 = pot.energy_and_forces(params, padded)
    np.testing.assert_allclose(e2, e1, rtol=1e-13)
    np.testing.assert_allclose(f2[:, :g.n_atoms], f1, atol=1e-12)
    np.testing.assert_array_equal(f2[:, g.n_atoms:], 0.0)
    atomwise = pot.atomwise_energy(params, padded)
    np.testing.assert_allclose(atomwise[:, :g.n_atoms], pot.atomwise_energy(params, g), rtol=1e-13)
    np.testing.assert_array_equal(atomwise[:, g.n_atoms:], 0.0)


def test_batch_equals_single_frames_and_rules_change_nothing(potential, jitted):
    pot, params = potential
    model, _ = jitted
    g = build_graphs(molecule(), SPECIES, CUTOFF)
    e, f = model.energy_and_forces(params, g)
    for k in range(2):
        e_k, f_k = model.energy_and_forces(params, g.frame(k))
        np.testing.assert_allclose(e_k, e[k], rtol=1e-13)
        np.testing.assert_allclose(f_k, f[k], atol=1e-12)
    np.testing.assert_allclose(model.atomwise_energy(params, g).sum(-1), e, rtol=1e-13)
    gi = jax.jit(lambda p, graph: pot.energy(p, graph, "gi"))
    np.testing.assert_array_equal(gi(params, g), model.energy(params, g))


def test_layer_methods_raise_a_clear_error(potential):
    pot, params = potential
    g = build_graphs(molecule(n_frames=1), SPECIES, CUTOFF).frame(0)
    message = "body-ordered model has no message-passing layers for GNN-LRP"
    with pytest.raises(ValueError, match=message):
        pot.embedding(params, g)
    with pytest.raises(ValueError, match=message):
        pot.layer_functions(params, g)
    with pytest.raises(ValueError, match=message):
        pot.atomwise_energy_from_embedding(params, jnp.zeros((len(SPECIES), 8)), g)


def test_config_stores_one_interaction_and_still_rejects_zero():
    assert ModelConfig("bodyordered", (1,), n_interactions=3).n_interactions == 1
    with pytest.raises(ValueError, match=r"n_interactions \(--interactions\) is 0; it must be at least 1"):
        ModelConfig("bodyordered", (1,), n_interactions=0)


def test_calculator_gives_the_models_energy_forces_and_atomwise_energies():
    pot, params = argon_potential("bodyordered")
    atoms = liquid()
    atoms.calc = JaxrelCalculator(pot, params)
    graph = build_graphs(atoms.positions, atoms.numbers, 4.0, cell=atoms.cell.array).frame(0)
    energy, forces = jax.jit(pot.energy_and_forces)(params, graph)
    assert atoms.get_potential_energy() == pytest.approx(float(energy), rel=1e-12)
    np.testing.assert_allclose(atoms.get_forces(), forces, atol=1e-12)
    np.testing.assert_allclose(atoms.get_potential_energies().sum(), float(energy), rtol=1e-12)
    assert np.abs(forces).max() > 1e-4


def test_nve_md_runs_and_conserves_energy():
    pot, params = small_potential(model="bodyordered")
    water = np.array([[0.0, 0, 0], [0.97, 0, 0], [-0.25, 0.93, 0]])
    traj = simulate(pot, params, water, np.array([8, 1, 1]), progress=False,
                    config=MDConfig(dt_fs=0.25, n_steps=200, log_every=20))
    assert traj.stop_reason == [None] and np.isfinite(traj.positions).all()
    assert np.ptp(traj.potential_energy_eV[0]) > 0
    assert np.ptp(traj.conserved_eV[0]) < 1e-2 * np.ptp(traj.potential_energy_eV[0])


def test_cli_trains_a_body_ordered_model(tmp_path, dimers):
    out = tmp_path / "run"
    assert main(["train", "--data", str(dimers), "--model", "bodyordered", "--cutoff", "3", "--features", "8",
                 "--rbf", "6", "--epochs", "2", "--batch-size", "4", "--quiet", "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["test"]["n_frames"] == 6
    pot, params, _ = load_checkpoint(out / "model")
    assert pot.config.model == "bodyordered" and pot.config.n_interactions == 1
    g = build_graphs(np.array([[0.0, 0, 0], [0.97, 0, 0], [-0.25, 0.93, 0]]), np.array([8, 1, 1]), 3.0)
    assert np.isfinite(pot.energy(params, g.astype("float32"))).all()
