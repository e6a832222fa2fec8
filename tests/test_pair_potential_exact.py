"""Exactness on a constructed model whose n-body decomposition is known analytically.

A SchNet with one interaction whose update and readout are linear,

    E_i = s · w·(h_i + A₂(A₁ Σ_j (W_in h_j) ⊙ W(r_ij) + b₁) + b₂) + c + e_{Z_i},

is a pure pair potential: E = Σ_i const(Z_i) + Σ_{i<j} φ(Z_i, Z_j, r_ij) with
φ(Z_i, Z_j, r) = E_dimer(r) − E_atom(Z_i) − E_atom(Z_j). Its walks visit at most two atoms
(T = 1), so there are no 3-body terms, and under GI rules (gradient × input, Schnake et
al., TPAMI 2022, arXiv:2006.03589) the 2-body term of every pair must equal φ of that pair
(the biases are per-atom constants and cancel in φ). SchNet's own interaction update has a
shifted-softplus between its two dense layers (Schütt et al., arXiv:1712.06113), which
couples the neighbours of an atom; the last test checks that the identity then fails.
float64 throughout (conftest enables it).
"""

import numpy as np
import pytest
from flax import nnx

from helpers import assert_conserves, assert_invariant
from jaxrel.graph import build_graphs
from jaxrel.models import ModelConfig, Potential
from jaxrel.models.potential import EnergyModel
from jaxrel.relevance import nbody_decomposition

SPECIES = np.array([18, 36, 18, 18, 36, 18, 36, 18])
CUTOFF = 5.0


def pair_model(linear: bool) -> tuple[Potential, nnx.State]:
    """A float64 one-interaction SchNet for Ar/Kr; ``linear`` makes update and readout linear."""
    config = ModelConfig("schnet", (18, 36), cutoff=CUTOFF, n_features=16, n_interactions=1,
                         n_rbf=12, dtype="float64")
    model = EnergyModel(config, {18: -0.7, 36: -1.3}, energy_scale=0.05, rngs=nnx.Rngs(3))
    if linear:
        model.net.interactions[0].f2out.activation = lambda x: x
        model.net.readout.activation = lambda x: x
    graphdef, params = nnx.split(model)
    return Potential(config, graphdef), params


def liquid_frame() -> np.ndarray:
    """8 atoms in a 6 Å cube with no pair closer than 2.5 Å."""
    rng = np.random.default_rng(11)
    positions = np.zeros((0, 3))
    while len(positions) < len(SPECIES):
        x = rng.uniform(0.0, 6.0, 3)
        if all(np.linalg.norm(positions - x, axis=1) > 2.5):
            positions = np.vstack([positions, x])
    return positions


def energy(pot, params, positions, species) -> np.ndarray:
    """Energies (n_frames,) eV of frames (n_frames, n_atoms, 3) sharing ``species``."""
    graph = build_graphs(np.asarray(positions, np.float64), np.asarray(species), CUTOFF)
    return np.asarray(pot.energy(params, graph.astype("float64")))


def pair_energies(pot, params, pair_species, r) -> np.ndarray:
    """φ(Z_i, Z_j, r) = E_dimer(r) − E_atom(Z_i) − E_atom(Z_j), eV, for (n, 2) species and (n,) r."""
    atom = {z: float(energy(pot, params, np.zeros((1, 1, 3)), [z])[0]) for z in np.unique(pair_species)}
    phi = np.zeros(len(r))
    for key in {tuple(p) for p in pair_species.tolist()}:
        rows = (pair_species == key).all(axis=1)
        dimers = np.zeros((rows.sum(), 2, 3))
        dimers[:, 1, 0] = r[rows]
        phi[rows] = energy(pot, params, dimers, list(key)) - atom[key[0]] - atom[key[1]]
    return phi


def two_body(pot, params, positions):
    graph = build_graphs(positions[None], SPECIES, CUTOFF).frame(0).astype("float64")
    return nbody_decomposition(pot, params, graph, max_order=2, rules="gi")


def test_linear_one_interaction_schnet_is_a_pair_potential():
    pot, params = pair_model(linear=True)
    positions = liquid_frame()
    atoms = sum(energy(pot, params, np.zeros((1, 1, 3)), [z])[0] for z in SPECIES)
    i, j = np.triu_indices(len(SPECIES), k=1)
    r = np.linalg.norm(positions[i] - positions[j], axis=1)
    inside = r < CUTOFF
    pairs = pair_energies(pot, params, np.stack([SPECIES[i], SPECIES[j]], 1)[inside], r[inside]).sum()
    np.testing.assert_allclose(energy(pot, params, positions[None], SPECIES)[0], atoms + pairs, rtol=1e-12)


def test_linear_pair_model_is_invariant_and_conservative():
    """Swapping the activations for the identity keeps a physical potential."""
    pot, params = pair_model(linear=True)
    graph = build_graphs(liquid_frame(), SPECIES, CUTOFF).frame(0).astype("float64")
    assert_invariant(pot, params, graph, seed=1)
    assert_conserves(pot, params, graph)


def test_two_body_terms_equal_the_encoded_pair_energies():
    pot, params = pair_model(linear=True)
    positions = liquid_frame()
    nb = two_body(pot, params, positions)
    table = nb.orders[2]
    assert len(table.atoms) >= 10, "the frame must have enough pairs inside the cutoff"
    expected = pair_energies(pot, params, table.species, table.distances[:, 0])
    assert np.abs(expected).min() > 1e-6, "pair energies must be non-trivial for the test to bite"
    np.testing.assert_allclose(table.relevance, expected, rtol=1e-8, atol=1e-12)
    # T = 1 walks visit at most two atoms: nothing is left for 3-body or higher terms.
    assert nb.residual == pytest.approx(0.0, abs=1e-12)


def test_two_body_terms_depend_only_on_species_and_distance():
    """Moving the other atoms does not change a pair's 2-body term."""
    pot, params = pair_model(linear=True)
    positions = liquid_frame()
    moved = positions.copy()
    moved[2:] += np.random.default_rng(5).normal(0.0, 0.3, moved[2:].shape)
    first = two_body(pot, params, positions).orders[2]
    second = two_body(pot, params, moved).orders[2]
    r01 = [t.relevance[(t.atoms == [0, 1]).all(axis=1)] for t in (first, second)]
    assert len(r01[0]) == 1 and len(r01[1]) == 1
    np.testing.assert_allclose(r01[1], r01[0], rtol=1e-10)


def test_nonlinear_update_breaks_the_pair_identity():
    """Control: with SchNet's shifted-softplus update, 2-body terms are not the dimer energies."""
    pot, params = pair_model(linear=False)
    positions = liquid_frame()
    table = two_body(pot, params, positions).orders[2]
    expected = pair_energies(pot, params, table.species, table.distances[:, 0])
    assert np.abs(table.relevance - expected).max() > 1e-6 * np.abs(expected).max()
