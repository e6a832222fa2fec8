"""Building blocks shared by the models: radial bases, cutoff, activations, readout.

Formulas:
* Gaussian radial basis and shifted softplus: Schütt et al., "SchNet – a deep learning
  architecture for molecules and materials", J. Chem. Phys. 2018, arXiv:1712.06113.
* Cosine cutoff 0.5 (cos(π r / r_c) + 1): Behler, J. Chem. Phys. 2011.
* sin(nπ r / r_c) / r radial basis: Schütt et al., "Equivariant message passing for the
  prediction of tensorial properties and molecular spectra" (PaiNN), ICML 2021,
  arXiv:2102.03150.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrel.relevance.rules import RuleSet


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


class MLP(nnx.Module):
    """Dense → activation → Dense on the node path; dense layers and activation follow ``rules``.

    Args:
        d_in, d_hidden, d_out: feature sizes.
        activation: elementwise function routed through ``rules.activation``.
    """

    def __init__(self, d_in: int, d_hidden: int, d_out: int, activation, *, rngs: nnx.Rngs,
                 param_dtype=jnp.float32):
        self.first = nnx.Linear(d_in, d_hidden, rngs=rngs, param_dtype=param_dtype)
        self.second = nnx.Linear(d_hidden, d_out, rngs=rngs, param_dtype=param_dtype)
        self.activation = activation

    def __call__(self, x: jax.Array, rules: RuleSet) -> jax.Array:
        hidden = rules.activation(self.activation, rules.dense(self.first, x))
        return rules.dense(self.second, hidden)


class SpeciesShift(nnx.Variable):
    """Fixed (not trained) per-species energy shifts and the energy scale, eV."""


def species_lookup(species_list: tuple[int, ...], species: jax.Array) -> jax.Array:
    """Index of each atomic number in ``species_list`` (padding Z = 0 maps to 0).

    Unknown species must be rejected before this point (``Potential.check_graph``).
    """
    table = jnp.zeros(max(species_list) + 1, jnp.int32).at[jnp.asarray(species_list)].set(
        jnp.arange(len(species_list), dtype=jnp.int32))
    return table[jnp.clip(species, 0, max(species_list))]
