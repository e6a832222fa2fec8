"""Physics and exactness of SchNet and PaiNN: invariance, equivariance, Σ F = 0, smooth
cutoff, padding, jit vs eager, bad input. float64 throughout.

Invariance and conservation are checked by the shared assertions of ``helpers``
(:func:`assert_invariant`, :func:`assert_conserves`), which are shown here to fail on
deliberately broken potentials."""

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from helpers import assert_conserves, assert_invariant, masked_atomwise_energy, random_rotation
from jaxrel.graph import build_graphs, pad_graph
from jaxrel.models import ModelConfig, Potential

MODELS = ["schnet", "painn", "nequip"]
SPECIES = np.array([6, 6, 8, 1, 1, 1, 1, 1, 1])
CUTOFF = 3.0


def molecule(seed=0, n_frames=2):
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 3.0, size=(len(SPECIES), 3))
    return base + 0.05 * rng.normal(size=(n_frames, len(SPECIES), 3))


def make(model, **kw):
    config = ModelConfig(model, (1, 6, 8), cutoff=CUTOFF, n_features=16, n_interactions=2,
                         n_rbf=8, dtype="float64", **kw)
    return Potential.create(config, {1: -0.5, 6: -37.8, 8: -75.0}, energy_scale=0.3, seed=1)


@pytest.fixture(params=MODELS)
def potential(request):
    return make(request.param)


def test_energy_and_atomwise_energies_are_invariant_and_forces_equivariant(potential):
    """Rotation + translation and permutation of the atoms, on a padded frame (padding with
    overlapping junk positions stays in place)."""
    pot, params = potential
    g = build_graphs(molecule(), SPECIES, CUTOFF)
    padded = pad_graph(g, g.n_atoms + 3, g.n_edges + 8)
    padded = padded._replace(positions=padded.positions.at[:, g.n_atoms:].set(0.3))
    _, f = pot.energy_and_forces(params, padded.frame(0))
    assert np.abs(f).max() > 1e-3  # forces are not trivially zero
    assert_invariant(pot, params, padded.frame(0), seed=3)
    # graphs built afresh from moved and relabelled atoms give the same energy
    pos = molecule()[0]
    perm = np.random.default_rng(0).permutation(len(SPECIES))
    moved = build_graphs(pos[perm] @ random_rotation(3).T + np.array([1.5, -2.0, 0.7]), SPECIES[perm], CUTOFF)
    np.testing.assert_allclose(pot.energy(params, moved), pot.energy(params, g.frame(0)), rtol=1e-12)


def test_forces_sum_to_zero_and_match_finite_differences(potential):
    pot, params = potential
    g = build_graphs(molecule(), SPECIES, CUTOFF)
    assert_conserves(pot, params, g, eps=1e-5, rtol=1e-6, atol=1e-8, n_checks=4)


def test_periodic_energy_is_invariant_under_wrapping_rotation_and_permutation_and_conserves(potential):
    pot, params = potential
    rng = np.random.default_rng(5)
    cell = np.diag([6.5, 7.0, 6.2])
    pos = rng.uniform(0, 6.0, size=(9, 3))
    shift = rng.integers(-2, 3, size=(9, 3)) @ cell  # whole-cell jumps change nothing
    g = build_graphs(pos, SPECIES, CUTOFF, cell=cell)
    e1, f1 = pot.energy_and_forces(params, g)
    e2, f2 = pot.energy_and_forces(params, build_graphs(pos + shift, SPECIES, CUTOFF, cell=cell))
    np.testing.assert_allclose(e2, e1, rtol=1e-12)
    np.testing.assert_allclose(f2, f1, atol=1e-11)
    assert np.abs(f1).max() > 1e-3
    assert_invariant(pot, params, g.frame(0), seed=5)
    assert_conserves(pot, params, g.frame(0), eps=1e-5, rtol=1e-6, atol=1e-8)


def test_energy_is_smooth_with_zero_force_at_the_cutoff(potential):
    pot, params = potential
    species = np.array([6, 8])

    def energy_force(r):
        g = build_graphs(np.array([[0.0, 0, 0], [r, 0, 0]]), species, CUTOFF + 0.5)
        e, f = pot.energy_and_forces(params, g)
        return float(e[0]), float(f[0, 1, 0])

    e_far, f_far = energy_force(CUTOFF + 0.3)
    assert f_far == 0.0
    for delta in (1e-2, 1e-3):
        e, f = energy_force(CUTOFF - delta)
        # cosine cutoff: E − E(∞) = O(δ²) and F = O(δ) as r → r_c from below
        assert abs(e - e_far) < 50 * delta ** 2
        assert abs(f) < 50 * delta
    e_in, _ = energy_force(CUTOFF / 2)
    assert abs(e_in - e_far) > 1e-4  # the pair does interact inside the cutoff


def test_padding_changes_no_energy_force_or_atomwise_energy(potential):
    pot, params = potential
    g = build_graphs(molecule(), SPECIES, CUTOFF)
    padded = pad_graph(g, g.n_atoms + 5, g.n_edges + 17)
    padded = padded._replace(positions=padded.positions.at[:, g.n_atoms:].set(0.3))  # overlapping junk
    energy_and_forces = jax.jit(pot.energy_and_forces)
    e1, f1 = energy_and_forces(params, g)
    e2, f2 = energy_and_forces(params, padded)
    np.testing.assert_allclose(e2, e1, rtol=1e-13)
    np.testing.assert_allclose(f2[:, :g.n_atoms], f1, atol=1e-12)
    np.testing.assert_array_equal(f2[:, g.n_atoms:], 0.0)
    atomwise = jax.jit(pot.atomwise_energy)
    np.testing.assert_allclose(atomwise(params, padded)[:, :g.n_atoms], atomwise(params, g), rtol=1e-13)
    assert np.isfinite(jax.jit(jax.grad(lambda p: pot.energy(params, padded._replace(positions=p)).sum()))(
        padded.positions)).all()

    @jax.jit
    def relevance(graph):  # per-atom gradient × input of the embedding under GI rules
        h0 = pot.embedding(params, graph)
        grad = jax.grad(lambda h: pot.atomwise_energy_from_embedding(params, h, graph, "gi").sum())(h0)
        return (h0 * grad).sum(-1)

    np.testing.assert_allclose(relevance(padded.frame(0))[:g.n_atoms], relevance(g.frame(0)), rtol=1e-12)
    np.testing.assert_array_equal(relevance(padded.frame(0))[g.n_atoms:], 0.0)


def test_jit_equals_eager_and_batch_equals_single_frames(potential):
    pot, params = potential
    g = build_graphs(molecule(n_frames=3), SPECIES, CUTOFF)
    e_eager, f_eager = pot.energy_and_forces(params, g)
    e_jit, f_jit = jax.jit(pot.energy_and_forces)(params, g)
    np.testing.assert_allclose(e_jit, e_eager, rtol=1e-13)
    np.testing.assert_allclose(f_jit, f_eager, atol=1e-12)
    for k in range(3):
        np.testing.assert_allclose(pot.energy(params, g.frame(k)), e_eager[k], rtol=1e-13)


def test_atomwise_energies_sum_to_energy_and_rules_and_masks_keep_the_forward_value(potential):
    pot, params = potential
    g = build_graphs(molecule(), SPECIES, CUTOFF)
    e = pot.energy(params, g)
    np.testing.assert_allclose(pot.atomwise_energy(params, g).sum(-1), e, rtol=1e-13)
    np.testing.assert_allclose(pot.energy(params, g, "gi"), e, rtol=1e-12)
    g0 = g.frame(0)
    h0 = pot.embedding(params, g0)
    composed = masked_atomwise_energy(pot, params, h0, g0, "gi", None)  # layer_functions composed
    np.testing.assert_allclose(composed, pot.atomwise_energy_from_embedding(params, h0, g0, "gi"), rtol=1e-13)
    masks = jnp.ones((pot.config.n_interactions + 1, g.n_atoms)).at[1, 0].set(0.0)
    masked = masked_atomwise_energy(pot, params, h0, g0, "gi", masks)
    np.testing.assert_allclose(masked.sum(), e[0], rtol=1e-12)
    grad = jax.grad(lambda h: masked_atomwise_energy(pot, params, h, g0, "gi", masks).sum())(h0)
    plain = jax.grad(lambda h: pot.atomwise_energy_from_embedding(params, h, g0, "gi").sum())(h0)
    assert np.abs(grad - plain).max() > 1e-6  # the masks do change the gradient


def test_gradient_times_input_of_the_embedding_is_exact_for_gi_rules_without_biases():
    """With GI rules, zero biases and zero shifts the network is positively homogeneous
    of degree 1 in h⁽⁰⁾ per walk, so Σ h⁽⁰⁾ · ∂E/∂h⁽⁰⁾ = E (Schnake et al. 2022)."""
    pot, params = make("schnet")

    def zero_node_biases(path, x):
        names = [str(getattr(k, "key", k)) for k in path]
        node_bias = names[-1] == "bias" and "filter" not in names
        return jnp.zeros_like(x) if node_bias or names[-1] == "shifts" else x

    pure = jax.tree_util.tree_map_with_path(zero_node_biases, nnx.to_pure_dict(params))
    nnx.replace_by_pure_dict(params, pure)
    g = build_graphs(molecule()[0], SPECIES, CUTOFF).frame(0)
    h0 = pot.embedding(params, g)
    energy_fn = lambda h: pot.atomwise_energy_from_embedding(params, h, g, "gi").sum()  # noqa: E731
    relevance = jnp.sum(h0 * jax.grad(energy_fn)(h0))
    np.testing.assert_allclose(relevance, energy_fn(h0), rtol=1e-10)
    plain = lambda h: pot.atomwise_energy_from_embedding(params, h, g).sum()  # noqa: E731
    assert abs(jnp.sum(h0 * jax.grad(plain)(h0)) - plain(h0)) > 1e-6  # without rules it is not


def test_painn_vector_features_rotate_with_the_frame():
    pot, params = make("painn")
    pos = molecule()[0]
    rot = random_rotation(7)

    def vectors(p):  # (s, v) after every layer
        g = build_graphs(p, SPECIES, CUTOFF).frame(0)
        layers, _ = pot.layer_functions(params, g)
        h = pot.embedding(params, g)
        for layer in layers:
            h = layer(h)
        return h

    s1, v1 = vectors(pos)
    s2, v2 = vectors(pos @ rot.T)
    np.testing.assert_allclose(s2, s1, atol=1e-11)
    np.testing.assert_allclose(v2, jnp.einsum("ij,ajf->aif", rot, v1), atol=1e-11)
    assert np.abs(v1).max() > 1e-3


@pytest.mark.parametrize("bad, message", [
    (np.nan, "frame 0, atom 3 has a non-finite position"),
    (np.inf, "frame 0, atom 3 has a non-finite position"),
    ("close", "atoms 2 and 3 are 0.05 Å apart, closer than 0.1 Å"),
])
def test_bad_positions_raise_a_clear_error(bad, message):
    pos = molecule()[0]
    pos[3] = pos[2] + [0.05, 0, 0] if bad == "close" else bad
    with pytest.raises(ValueError, match=message):
        build_graphs(pos, SPECIES, CUTOFF)


def test_unknown_species_is_rejected_before_evaluation():
    pot, _ = make("schnet")
    species = SPECIES.copy()
    species[4] = 54
    g = build_graphs(molecule()[0], species, CUTOFF)
    with pytest.raises(ValueError, match="atom 4 has species 54, which the model was not trained on"):
        pot.check_graph(g)


def test_edge_capacity_overflow_says_the_size_that_fits():
    pos = molecule()[0]
    need = int(build_graphs(pos, SPECIES, CUTOFF).edge_mask.sum())
    with pytest.raises(ValueError, match=f"pass n_edges >= {need}"):
        build_graphs(pos, SPECIES, CUTOFF, n_edges=need - 1)


def test_neighbour_list_reallocates_when_later_frames_have_more_neighbours():
    rng = np.random.default_rng(2)
    sparse = rng.uniform(0, 20.0, size=(30, 3))
    dense = rng.uniform(0, 4.0, size=(30, 3)) + 8.0
    g = build_graphs(np.stack([sparse, dense]), np.full(30, 18), 2.5, min_distance=None)
    for k, pos in enumerate((sparse, dense)):
        d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
        expected = int(((d < 2.5) & (d > 0)).sum())
        assert int(g.edge_mask[k].sum()) == expected


def test_cell_narrower_than_twice_the_cutoff_is_rejected():
    with pytest.raises(ValueError, match="less than twice the 3.0 Å cutoff"):
        build_graphs(molecule()[0], SPECIES, CUTOFF, cell=np.eye(3) * 5.0)


def test_frames_with_different_cells_get_the_same_edges_as_single_frame_builds():
    rng = np.random.default_rng(0)
    pos = rng.uniform(0, 6.0, size=(3, 10, 3))
    cells = np.stack([np.eye(3) * 6.0, np.eye(3) * 6.2, np.eye(3) * 6.4])
    batch = build_graphs(pos, np.full(10, 18), 2.5, cell=cells, min_distance=None)
    for f in range(3):
        single = build_graphs(pos[f], np.full(10, 18), 2.5, cell=cells[f], min_distance=None)
        k = int(single.edge_mask.sum())
        assert int(batch.edge_mask[f].sum()) == k > 0
        assert set(zip(batch.senders[f, :k].tolist(), batch.receivers[f, :k].tolist())) == \
            set(zip(single.senders[0, :k].tolist(), single.receivers[0, :k].tolist()))


@dataclass(frozen=True)
class Broken:
    """A potential with a deliberate defect, to show the physics assertions can fail.

    ``"field"``: an external field, E + Σ_i E·x_i (neither rotation/translation invariant
    nor Σ F = 0); ``"labels"``: E + Σ_i w_i |x_i − x̄|² with weights that depend on the atom's
    index (invariant under rotation and translation, conservative, but not under
    permutation); ``"forces"``: the correct energy with forces scaled by 1.1 (invariant and
    Σ F = 0, but F ≠ −∂E/∂x).
    """

    potential: Potential
    kind: str

    def atomwise_energy(self, params, graph):
        e = self.potential.atomwise_energy(params, graph)
        x, real = graph.positions, graph.node_mask
        if self.kind == "field":
            return e + jnp.where(real, x @ jnp.array([0.3, -0.2, 0.1]), 0.0)
        if self.kind == "labels":
            centre = jnp.sum(jnp.where(real[:, None], x, 0.0), 0) / real.sum()
            weight = 0.05 * (1.0 + jnp.arange(len(real)))
            return e + jnp.where(real, weight * jnp.sum((x - centre) ** 2, -1), 0.0)
        return e

    def energy(self, params, graph):
        return self.atomwise_energy(params, graph).sum(-1)

    def energy_and_forces(self, params, graph):
        e, grad = jax.value_and_grad(lambda p: self.energy(params, graph._replace(positions=p)))(graph.positions)
        return e, -grad * (1.1 if self.kind == "forces" else 1.0)


@pytest.mark.parametrize("kind, check, message", [
    ("field", assert_invariant, "energy changed under a rotation \\+ translation"),
    ("field", assert_conserves, "forces do not sum to zero"),
    ("labels", assert_invariant, "energy changed under a permutation of the atoms"),
    ("forces", assert_conserves, "is not −∂E/∂x"),
])
def test_physics_assertions_fail_on_a_broken_potential(kind, check, message):
    pot, params = make("schnet")
    g = build_graphs(molecule()[0], SPECIES, CUTOFF).frame(0)
    check(pot, params, g)  # the unbroken model passes
    with pytest.raises(AssertionError, match=message):
        check(Broken(pot, kind), params, g)


@pytest.mark.parametrize("kind, check", [("labels", assert_conserves), ("forces", assert_invariant)])
def test_physics_assertions_accept_defects_outside_what_they_check(kind, check):
    pot, params = make("schnet")
    check(Broken(pot, kind), params, build_graphs(molecule()[0], SPECIES, CUTOFF).frame(0))
