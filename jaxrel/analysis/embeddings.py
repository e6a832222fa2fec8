"""The learned element embeddings of a potential, projected and scored against the periodic table.

A message-passing potential (SchNet, PaiNN, NequIP) starts from h⁽⁰⁾ = embed(Z), one learned
vector per species. Schütt et al. ("SchNet – a deep learning architecture for molecules and
materials", J. Chem. Phys. 2018, arXiv:1712.06113) showed that the two leading principal
components of SchNet's embeddings, trained on the Materials Project, order the elements by
their group in the periodic table. This module measures that order for any of our models:

* :func:`element_embeddings`: the (S, F) embedding matrix, read through
  :meth:`~jaxrel.models.Potential.embedding` (every architecture, no access to the params' layout);
* :func:`embedding_pca`: principal component analysis of that matrix (SVD of the centred rows),
  with the Spearman rank correlation of each component with the IUPAC group and the period
  (:func:`group_and_period`);
* :func:`embedding_pca_seeds`: the same over an ensemble of seeds, with mean and spread;
* :func:`plot_element_embeddings`: the first two components, each point an element.

Species are read as atomic numbers. The embeddings have no unit; arrays are float64.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import NamedTuple

import jax.numpy as jnp
import matplotlib
import numpy as np
from matplotlib.figure import Figure
from scipy.stats import ConstantInputWarning, spearmanr

from jaxrel.analysis.numerics import species_label
from jaxrel.analysis.plots import save_figure
from jaxrel.graph import Graph
from jaxrel.models import Potential

PERIOD_STARTS = (1, 3, 11, 19, 37, 55, 87)
"""Atomic number of the first element (an alkali metal, or H) of periods 1–7; period 8 would start at 119."""


class EmbeddingPCA(NamedTuple):
    """Principal components of one model's element embeddings (:func:`embedding_pca`).

    Fields (S species, k components)::

        species                   (S,) int64   | atomic numbers, sorted (the model's config.species)
        symbols                   tuple of S str | element symbols
        group                     (S,) int64   | IUPAC group 1–18 (:func:`group_and_period`)
        period                    (S,) int64   | period 1–7
        components                (S, k) float64 | each species' coordinate on the principal axes
        explained_variance_ratio  (k,) float64 | share of the embeddings' total variance per component
        group_rho                 (k,) float64 | Spearman ρ of each component with the group
        period_rho                (k,) float64 | Spearman ρ of each component with the period

    Each component's sign makes Σ_s (Z_s − mean Z) · component_s ≥ 0, so runs and seeds compare. A ρ
    is NaN where its two sides cannot be ranked: the species all share one group (or period), or
    the component is constant (embeddings of lower rank than k).
    """

    species: np.ndarray
    symbols: tuple[str, ...]
    group: np.ndarray
    period: np.ndarray
    components: np.ndarray
    explained_variance_ratio: np.ndarray
    group_rho: np.ndarray
    period_rho: np.ndarray


class SeedSpread(NamedTuple):
    """One Spearman ρ (with group, or with period) over an ensemble of n seeds, k components.

    Fields::

        per_seed      (n, k) float64 | ρ of each seed's components
        mean, std     (k,) float64   | over seeds, per component (std ddof = 1; 0 for one seed)
        max_abs       (n,) float64   | max over the k components of |ρ|, per seed (NaN if one ρ is NaN)
        max_abs_mean  float          | mean of max_abs over seeds
        max_abs_std   float          | its standard deviation (ddof = 1; 0 for one seed)
    """

    per_seed: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    max_abs: np.ndarray
    max_abs_mean: float
    max_abs_std: float


class EmbeddingSeeds(NamedTuple):
    """Embedding PCA of an ensemble (:func:`embedding_pca_seeds`): ``results`` one
    :class:`EmbeddingPCA` per seed, and the spread of their ρ with ``group`` and with ``period``
    (:class:`SeedSpread`)."""

    results: tuple[EmbeddingPCA, ...]
    group: SeedSpread
    period: SeedSpread


def group_and_period(z: int) -> tuple[int, int]:
    """IUPAC group (1–18) and period (1–7) of the element with atomic number ``z``.

    Periods hold 2, 8, 8, 18, 18, 32, 32 elements; in the short periods the two s-block
    elements take groups 1–2 and the six p-block elements groups 13–18; in periods 6–7 the
    f-block follows group 2, and Lu and Lr take group 3 (IUPAC, "The constitution of group 3
    of the periodic table", Pure Appl. Chem. 2021).

    Raises:
        ValueError: ``z`` outside 1–118, or a lanthanide La–Yb (57–70) or actinide Ac–No
            (89–102), which have no group number.
    """
    z = int(z)
    if not 1 <= z <= 118:
        raise ValueError(f"species {z} is not an element (atomic numbers run from 1 to 118); "
                         "the periodic table applies only to atomic numbers, not to coarse-grained beads")
    period = sum(start <= z for start in PERIOD_STARTS)
    k = z - PERIOD_STARTS[period - 1]
    if period == 1:
        return (1 if k == 0 else 18), 1
    if k < 2:
        return k + 1, period
    if period <= 3:
        return k + 11, period
    if period <= 5:
        return k + 1, period
    if k < 16:
        raise ValueError(f"{species_label((z,))} (Z = {z}) is an f-block element, which has no group "
                         "number 1–18; leave lanthanides La–Yb and actinides Ac–No out of the analysis")
    return k - 13, period


def element_embeddings(potential: Potential, params) -> tuple[np.ndarray, np.ndarray]:
    """The input features h⁽⁰⁾ = embed(Z) of every species the model knows.

    Read through :meth:`~jaxrel.models.Potential.embedding` on a graph of one atom per species
    and no edges, so it serves every message-passing architecture.

    Returns:
        ``(species (S,) int64, matrix (S, n_features) float64)``: the sorted atomic numbers of
        ``potential.config.species`` and row s the embedding of species[s].
    Raises:
        ValueError: the body-ordered model, which has no embedding.
    """
    if not potential.has_layers:
        raise ValueError("the body-ordered model has no element embedding (its energy is an explicit sum "
                         "of 2- and 3-body terms); use a SchNet, PaiNN or NequIP model")
    species = np.asarray(potential.config.species, np.int64)
    n, no_edges = len(species), jnp.zeros(0, jnp.int32)
    graph = Graph(positions=jnp.zeros((n, 3), jnp.dtype(potential.config.dtype)),
                  species=jnp.asarray(species, jnp.int32), senders=no_edges, receivers=no_edges,
                  node_mask=jnp.ones(n, bool), edge_mask=jnp.zeros(0, bool))
    return species, np.asarray(potential.embedding(params, graph), np.float64)


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman ρ of two (S,) arrays (ties take their mean rank); NaN when a side is constant."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantInputWarning)
        return float(spearmanr(x, y).statistic)


def embedding_pca(potential: Potential, params, n_components: int = 2) -> EmbeddingPCA:
    """Principal components of a model's element embeddings, scored against the periodic table.

    PCA is the SVD of the centred matrix X − mean(X) = U Σ Vᵀ of :func:`element_embeddings`;
    component c of species s is U[s, c] Σ[c] and its explained variance ratio Σ[c]² / Σ_c' Σ[c']².
    Each component is correlated (Spearman ρ) with the IUPAC group and with the period of the
    species, the measure of the periodic-table order that Schütt et al. (J. Chem. Phys. 2018,
    arXiv:1712.06113) saw in SchNet's embeddings.

    Args:
        potential, params: a SchNet, PaiNN or NequIP model and its params.
        n_components: k, 1 ≤ k ≤ min(S − 1, n_features) (S points span at most S − 1 directions).

    Returns:
        :class:`EmbeddingPCA`.
    Raises:
        ValueError: the body-ordered model; fewer than 3 species (a rank correlation needs 3
            points); ``n_components`` out of range; identical embeddings for every species; a
            species that is no element or lies in the f-block (:func:`group_and_period`).
    """
    species, matrix = element_embeddings(potential, params)
    if len(species) < 3:
        raise ValueError(f"the model knows {len(species)} species ({', '.join(map(str, species))}), but a rank "
                         "correlation with the periodic table needs at least 3; analyse a model trained on "
                         "3 or more elements")
    largest = min(len(species) - 1, matrix.shape[1])
    if not 1 <= n_components <= largest:
        raise ValueError(f"n_components is {n_components}; it must be between 1 and {largest} for "
                         f"{len(species)} species of {matrix.shape[1]} features")
    group, period = np.array([group_and_period(z) for z in species], np.int64).T
    u, sigma, _ = np.linalg.svd(matrix - matrix.mean(axis=0), full_matrices=False)
    variance = sigma ** 2
    if variance.sum() == 0:
        raise ValueError("every species has the same embedding, so there is no variance to project; "
                         "check that the params are trained")
    components = u[:, :n_components] * sigma[:n_components]
    sign = np.sign((species - species.mean()) @ components)
    largest_entry = components[np.argmax(np.abs(components), axis=0), np.arange(n_components)]
    components = components * np.where(sign == 0, np.sign(largest_entry), sign)
    return EmbeddingPCA(
        species=species, symbols=tuple(species_label((z,)) for z in species), group=group, period=period,
        components=components, explained_variance_ratio=variance[:n_components] / variance.sum(),
        group_rho=np.array([_spearman(c, group) for c in components.T]),
        period_rho=np.array([_spearman(c, period) for c in components.T]))


def _spread(per_seed: np.ndarray) -> SeedSpread:
    ddof = 1 if len(per_seed) > 1 else 0
    max_abs = np.abs(per_seed).max(axis=1)
    return SeedSpread(per_seed=per_seed, mean=per_seed.mean(axis=0), std=per_seed.std(axis=0, ddof=ddof),
                      max_abs=max_abs, max_abs_mean=float(max_abs.mean()),
                      max_abs_std=float(max_abs.std(ddof=ddof)))


def embedding_pca_seeds(models, n_components: int = 2) -> EmbeddingSeeds:
    """:func:`embedding_pca` of every member of an ensemble, with the mean and spread of ρ over seeds.

    Components are signed by their correlation with Z (:class:`EmbeddingPCA`), so per-component
    means over seeds are meaningful; the max ``|ρ|`` over the leading components does not depend on
    which component carries the order.

    Args:
        models: [(potential, params, …)] one per seed, all of one species set, e.g. the output of
            :func:`jaxrel.checkpoint.load_models` (entries beyond the first two are ignored).
        n_components: as :func:`embedding_pca`.

    Returns:
        :class:`EmbeddingSeeds`.
    Raises:
        ValueError: no models; members that know different species; as :func:`embedding_pca`.
    """
    models = list(models)
    if not models:
        raise ValueError("no models given; pass one (potential, params) per seed, e.g. from load_models")
    results = tuple(embedding_pca(potential, params, n_components) for potential, params, *_ in models)
    for k, r in enumerate(results[1:], start=1):
        if not np.array_equal(r.species, results[0].species):
            raise ValueError(f"model {k} knows species {r.species.tolist()} but model 0 knows "
                             f"{results[0].species.tolist()}; compare seeds of one configuration")
    return EmbeddingSeeds(results=results, group=_spread(np.stack([r.group_rho for r in results])),
                          period=_spread(np.stack([r.period_rho for r in results])))


def plot_element_embeddings(result: EmbeddingPCA, path, *, title: str = "") -> Path:
    """The first two principal components of the element embeddings, one labelled point per
    element, coloured by IUPAC group, with the Spearman ρ of each component in the title.

    Args:
        result: :func:`embedding_pca` output with at least 2 components.
        path: PNG to write.
        title: first line of the title (e.g. the model); the ρ values follow.

    Returns:
        ``path`` as a Path.
    Raises:
        ValueError: a result of one component.
    """
    if result.components.shape[1] < 2:
        raise ValueError("the plot needs two principal components; compute embedding_pca with n_components=2")
    colours = matplotlib.colormaps["tab20"]
    fig = Figure(figsize=(6.4, 5.0))
    ax = fig.add_subplot()
    x, y = result.components[:, 0], result.components[:, 1]
    for g in np.unique(result.group):
        shown = result.group == g
        ax.scatter(x[shown], y[shown], s=30, color=colours(int(g) - 1), label=f"group {g}")
    for symbol, xs, ys in zip(result.symbols, x, y):
        ax.annotate(symbol, (xs, ys), textcoords="offset points", xytext=(4, 3), fontsize=8)
    ratio = result.explained_variance_ratio
    ax.set_xlabel(f"PC1 ({100 * ratio[0]:.0f} % of variance)")
    ax.set_ylabel(f"PC2 ({100 * ratio[1]:.0f} % of variance)")
    scores = "; ".join(f"PC{c + 1}: ρ_group {result.group_rho[c]:+.2f}, ρ_period {result.period_rho[c]:+.2f}"
                       for c in range(2))
    ax.set_title(f"{title}\n{scores}" if title else scores, fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return save_figure(fig, path)
