"""Learned element embeddings (jaxrel.analysis.embeddings): the rows read are the model's own,
the periodic-table numbering, PCA with deterministic signs and its Spearman scores, the
ensemble spread, the errors and the figure."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import small_potential

from jaxrel.analysis import (element_embeddings, embedding_pca, embedding_pca_seeds, group_and_period,
                             plot_element_embeddings)
from jaxrel.graph import build_graphs
from jaxrel.models import ModelConfig, Potential

SPECIES = (1, 3, 5, 6, 7, 8, 9, 11)  # H Li B C N O F Na: groups 1 1 13 14 15 16 17 1, periods 1 2 2 2 2 2 2 3
ONE_PER_GROUP = (1, 4, 5, 6, 7, 8, 9, 10)  # H Be B C N O F Ne: groups 1 2 13–18, no ties to rank
GROUPS = np.array([1, 2, 13, 14, 15, 16, 17, 18])


def potential(model="schnet", species=SPECIES, seed=0):
    return Potential.create(ModelConfig(model, species, cutoff=3.0, n_features=6, n_interactions=1, n_rbf=4,
                                        dtype="float64"), seed=seed)


def with_embedding(potential, params, matrix):
    """Params with the embedding table (S, F) replaced by ``matrix`` (``params`` itself unchanged)."""
    module = nnx.clone(potential.module(params))
    module.net.embedding.embedding[...] = jnp.asarray(matrix, jnp.float64)
    return nnx.split(module)[1]


def group_matrix(seed=0):
    """(8, 6) embeddings of :data:`ONE_PER_GROUP` whose centred rows are (g − mean g) u plus a much
    smaller part orthogonal to u: the first principal direction is u and PC1 is the group number,
    up to scale and shift."""
    rng = np.random.default_rng(seed)
    u = np.linalg.qr(rng.normal(size=(6, 6)))[0]
    return np.outer(GROUPS, u[:, 0]) + 0.01 * rng.normal(size=(8, 5)) @ u[:, 1:].T + rng.normal(size=6)


@pytest.mark.parametrize("model", ["schnet", "painn", "nequip"])
def test_element_embeddings_are_the_rows_the_model_gives_its_atoms(model):
    pot, params = potential(model, species=(1, 6, 8))
    species, matrix = element_embeddings(pot, params)
    assert species.tolist() == [1, 6, 8] and matrix.shape == (3, 6) and matrix.dtype == np.float64
    atoms = np.array([8, 1, 1, 6, 8])
    positions = np.array([[0.0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0], [2.5, 0.1, 0.2], [3.7, 0.0, 0.1]])
    h0 = np.asarray(pot.embedding(params, build_graphs(positions, atoms, cutoff=3.0).frame(0)))
    np.testing.assert_array_equal(h0, matrix[np.searchsorted(species, atoms)])
    assert np.ptp(matrix, axis=0).max() > 0  # the rows differ, so a wrong mapping would fail


@pytest.mark.parametrize("z, group, period", [
    (1, 1, 1), (2, 18, 1), (3, 1, 2), (4, 2, 2), (5, 13, 2), (6, 14, 2), (7, 15, 2), (8, 16, 2), (9, 17, 2),
    (11, 1, 3), (13, 13, 3), (14, 14, 3), (15, 15, 3), (16, 16, 3), (17, 17, 3), (18, 18, 3), (19, 1, 4),
    (26, 8, 4), (35, 17, 4), (54, 18, 5), (55, 1, 6), (71, 3, 6), (72, 4, 6), (86, 18, 6), (103, 3, 7),
    (118, 18, 7)])
def test_group_and_period_match_the_periodic_table(z, group, period):
    assert group_and_period(z) == (group, period)


@pytest.mark.parametrize("z", [0, 57, 64, 92, 119])
def test_group_and_period_rejects_non_elements_and_the_f_block(z):
    with pytest.raises(ValueError, match="no group number|not an element"):
        group_and_period(z)


def test_pc1_of_embeddings_ordered_by_group_has_rank_correlation_one():
    pot, params = potential(species=ONE_PER_GROUP)
    result = embedding_pca(pot, with_embedding(pot, params, group_matrix()))
    assert result.species.tolist() == list(ONE_PER_GROUP)
    assert result.symbols == ("H", "Be", "B", "C", "N", "O", "F", "Ne")
    np.testing.assert_array_equal(result.group, GROUPS)
    np.testing.assert_array_equal(result.period, [1, 2, 2, 2, 2, 2, 2, 2])
    assert result.components.shape == (8, 2) and result.explained_variance_ratio.shape == (2,)
    assert result.group_rho[0] == pytest.approx(1.0, abs=1e-12)  # signed: the groups rise with Z here
    assert result.explained_variance_ratio[0] > 0.99
    centred = GROUPS - GROUPS.mean()
    np.testing.assert_allclose(result.components[:, 0] / np.linalg.norm(result.components[:, 0]),
                               centred / np.linalg.norm(centred), atol=1e-3)


def test_random_embeddings_do_not_give_perfect_rank_correlation():
    pot, params = potential(seed=3)
    result = embedding_pca(pot, params, n_components=3)
    assert result.group_rho.shape == result.period_rho.shape == (3,)
    assert np.all(np.abs(result.group_rho) < 1.0)
    assert result.explained_variance_ratio.sum() <= 1.0 and np.all(np.diff(result.explained_variance_ratio) <= 0)


def test_component_signs_do_not_depend_on_the_sign_of_the_embeddings():
    pot, params = potential()
    matrix = element_embeddings(pot, params)[1]
    plus = embedding_pca(pot, params, n_components=3)
    minus = embedding_pca(pot, with_embedding(pot, params, -matrix), n_components=3)
    np.testing.assert_allclose(minus.components, plus.components, atol=1e-12)
    np.testing.assert_allclose(minus.group_rho, plus.group_rho, atol=1e-12)
    assert np.all((plus.species - plus.species.mean()) @ plus.components >= 0)


def test_seed_spread_of_an_ensemble():
    pot, params = potential()
    other_pot, other = potential(seed=1)
    flipped = with_embedding(pot, params, -element_embeddings(pot, params)[1])
    same = embedding_pca_seeds([(pot, params, {"seed": 0}), (pot, flipped, {"seed": 0})])
    np.testing.assert_allclose(same.group.std, 0.0, atol=1e-12)
    assert same.period.max_abs_std == pytest.approx(0.0, abs=1e-12)

    spread = embedding_pca_seeds([(pot, params), (other_pot, other)])
    per_seed = np.stack([r.group_rho for r in spread.results])
    np.testing.assert_array_equal(spread.group.per_seed, per_seed)
    np.testing.assert_allclose(spread.group.mean, per_seed.mean(axis=0))
    np.testing.assert_allclose(spread.group.std, per_seed.std(axis=0, ddof=1))
    np.testing.assert_allclose(spread.period.max_abs, np.abs(spread.period.per_seed).max(axis=1))
    assert spread.group.std.max() > 0  # different seeds differ, so the spread is not trivially 0


def test_seeds_of_different_species_sets_raise():
    a, b = potential(), potential(species=(1, 6, 7, 8))
    with pytest.raises(ValueError, match="one configuration"):
        embedding_pca_seeds([a, b])
    with pytest.raises(ValueError, match="no models"):
        embedding_pca_seeds([])


def test_fewer_than_three_species_raise():
    pot, params = small_potential()  # H and O
    with pytest.raises(ValueError, match="at least 3"):
        embedding_pca(pot, params)


@pytest.mark.parametrize("n_components", [0, 8])
def test_n_components_out_of_range_raise(n_components):
    pot, params = potential()  # 8 species, 6 features: at most 6 components
    with pytest.raises(ValueError, match="between 1 and 6"):
        embedding_pca(pot, params, n_components)


def test_body_ordered_model_has_no_embedding():
    pot, params = small_potential(model="bodyordered")
    with pytest.raises(ValueError, match="body-ordered model has no element embedding"):
        element_embeddings(pot, params)


def test_plot_writes_a_png(tmp_path):
    pot, params = potential()
    path = plot_element_embeddings(embedding_pca(pot, params), tmp_path / "figs" / "embeddings.png", title="SchNet")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="two principal components"):
        plot_element_embeddings(embedding_pca(pot, params, n_components=1), tmp_path / "one.png")
