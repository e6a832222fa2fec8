"""NaN-safe elementwise maths, activations, cutoff functions and radial bases.

Pure functions of arrays (no parameters). Formulas:

* Gaussian radial basis and shifted softplus: Schütt et al., "SchNet – a deep learning
  architecture for molecules and materials", J. Chem. Phys. 2018, arXiv:1712.06113.
* Cosine cutoff 0.5 (cos(π r / r_c) + 1): Behler, J. Chem. Phys. 2011.
* sin(nπ r / r_c) / r radial basis: Schütt et al., "Equivariant message passing for the
  prediction of tensorial properties and molecular spectra" (PaiNN), ICML 2021,
  arXiv:2102.03150.
* NaN-safe norm: the double-where form of e3nn-jax and jax-md.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def safe_norm(x: jax.Array, axis: int = -1, keepdims: bool = False) -> jax.Array:
    """Euclidean norm whose gradient is 0 (not NaN) at x = 0.

    Uses the double-where form (e3nn-jax, jax-md) so padded and zero-length edges
    never produce NaN gradients.
    """
    sq = jnp.sum(x * x, axis=axis, keepdims=keepdims)
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def unit_vectors(vectors: jax.Array, lengths: jax.Array) -> jax.Array:
    """Directions ``r̂ = r / |r|`` of (n_edges, 3) vectors with lengths (n_edges,); 0 (not NaN, and
    with a zero gradient) where the length is 0, e.g. padded edges."""
    positive = lengths[:, None] > 0
    return jnp.where(positive, vectors / jnp.where(positive, lengths[:, None], 1.0), 0.0)


def shifted_softplus(x: jax.Array) -> jax.Array:
    """ssp(x) = ln(1 + eˣ) − ln 2, so ssp(0) = 0 (SchNet, arXiv:1712.06113)."""
    return jax.nn.softplus(x) - math.log(2.0)


def cosine_cutoff(r: jax.Array, cutoff: float) -> jax.Array:
    """0.5 (cos(π r / r_c) + 1) for r < r_c, else 0; smooth with zero slope at r_c.

    Args:
        r: (n_edges,) distances, Å.
        cutoff: r_c, Å.
    Returns:
        (n_edges,) dimensionless weights in [0, 1].
    """
    return jnp.where(r < cutoff, 0.5 * (jnp.cos(jnp.pi * r / cutoff) + 1.0), 0.0)


def gaussian_rbf(r: jax.Array, cutoff: float, n_rbf: int) -> jax.Array:
    """exp(−(r − μ_k)² / (2 w²)), μ_k evenly spaced on [0, r_c], w the spacing.

    Returns:
        (n_edges, n_rbf), dimensionless.
    """
    centers = jnp.linspace(0.0, cutoff, n_rbf, dtype=r.dtype)
    width = centers[1] - centers[0]
    return jnp.exp(-0.5 * ((r[:, None] - centers) / width) ** 2)


def sinc_rbf(r: jax.Array, cutoff: float, n_rbf: int) -> jax.Array:
    """sin(n π r / r_c) / r for n = 1..n_rbf (PaiNN, arXiv:2102.03150), NaN-safe at r = 0.

    Returns:
        (n_edges, n_rbf), Å⁻¹.
    """
    n = jnp.arange(1, n_rbf + 1, dtype=r.dtype)
    positive = r[:, None] > 0
    safe_r = jnp.where(positive, r[:, None], 1.0)
    return jnp.where(positive, jnp.sin(n * jnp.pi * safe_r / cutoff) / safe_r, n * jnp.pi / cutoff)
