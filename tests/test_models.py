"""Physics and exactness of SchNet and PaiNN: invariance, equivariance, Σ F = 0, smooth
cutoff, padding, jit vs eager, bad input. float64 throughout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrel.graph import build_graphs, pad_graph
from jaxrel.models import ModelConfig, Potential

MODELS = ["schnet", "painn"]
SPECIES = np.array([6, 6, 8, 1, 1, 1, 1, 1, 1])
CUTOFF = 3.0


def random_rotation(seed):
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


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


def test_energy_is_rotation_translation_invariant_and_forces_rotate(potential):
    pot, params = potential
    pos = molecule()[0]
    rot = random_rotation(3)
    g1 = build_graphs(pos, SPECIES, CUTOFF)
    g2 = build_graphs(pos @ rot.T + np.array([1.5, -2.0, 0.7]), SPECIES, CUTOFF)
    e1, f1 = pot.energy_and_forces(params, g1)
    e2, f2 = pot.energy_and_forces(params, g2)
    np.testing.assert_allclose(e2, e1, rtol=1e-12)
    np.testing.assert_allclose(f2[0], f1[0] @ rot.T, atol=1e-11)
    assert np.abs(f1).max() > 1e-3  # forces are not trivially zero


def test_energy_is_permutation_invariant(potential):
    pot, params = potential
    pos = molecule()[0]
    perm = np.random.default_rng(0).permutation(len(SPECIES))
    e1, f1 = pot.energy_and_forces(params, build_graphs(pos, SPECIES, CUTOFF))
    e2, f2 = pot.energy_and_forces(params, build_graphs(pos[perm], SPECIES[perm], CUTOFF))
    np.testing.assert_allclose(e2, e1, rtol=1e-12)
    np.testing.assert_allclose(f2[0], f1[0][perm], atol=1e-11)


def test_forces_sum_to_zero_and_match_finite_differences(potential):
    pot, params = potential
    pos = molecule()[0]
    g = build_graphs(pos, SPECIES, CUTOFF)
    e, f = pot.energy_and_forces(params, g)
    np.testing.assert_allclose(f[0].sum(0), 0.0, atol=1e-11)
    h = 1e-5
    for atom, axis in [(0, 0), (4, 2)]:
        d = np.zeros_like(pos)
        d[atom, axis] = h
        gp, gm = (g._replace(positions=g.positions + s * d[None]) for s in (1, -1))
        fd = -(pot.energy(params, gp) - pot.energy(params, gm)) / (2 * h)
        np.testing.assert_allclose(f[0, atom, axis], fd[0], rtol=1e-6, atol=1e-8)


def test_periodic_energy_is_invariant_under_wrapping_and_forces_sum_to_zero(potential):
    pot, params = potential
    rng = np.random.default_rng(5)
    cell = np.diag([6.5, 7.0, 6.2])
    pos = rng.uniform(0, 6.0, size=(9, 3))
    shift = rng.integers(-2, 3, size=(9, 3)) @ cell  # whole-cell jumps change nothing
    e1, f1 = pot.energy_and_forces(params, build_graphs(pos, SPECIES, CUTOFF, cell=cell))
    e2, f2 = pot.energy_and_forces(params, build_graphs(pos + shift, SPECIES, CUTOFF, cell=cell))
    np.testing.assert_allclose(e2, e1, rtol=1e-12)
    np.testing.assert_allclose(f2, f1, atol=1e-11)
    np.testing.assert_allclose(f1[0].sum(0), 0.0, atol=1e-11)


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
    e_in, _ = energy_force(CUTOFF - 0.5)
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


def test_atomwise_energies_sum_to_energy_and_rules_keep_the_forward_value(potential):
    pot, params = potential
    g = build_graphs(molecule(), SPECIES, CUTOFF)
    e = pot.energy(params, g)
    np.testing.assert_allclose(pot.atomwise_energy(params, g).sum(-1), e, rtol=1e-13)
    masks = jnp.ones((pot.config.n_interactions + 1, g.n_atoms)).at[1, 0].set(0.0)
    np.testing.assert_allclose(pot.energy(params, g, "gi"), e, rtol=1e-12)
    np.testing.assert_allclose(pot.energy(params, g.frame(0), "gi", masks), e[0], rtol=1e-12)


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
