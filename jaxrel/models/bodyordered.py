"""An explicitly body-ordered potential (1-, 2- and 3-body terms) as a Flax NNX module.

The network output of atom i (before :class:`~jaxrel.models.potential.EnergyModel` applies
E_i = scale · y_i + e_{Z_i}) is

    y_i = ½ Σ_j φ(r_ij; Z_i, Z_j) + Σ_{j<k; j,k ∈ N(i)} ψ_i(j, k),

so the total energy is, by construction, a truncated many-body expansion:

    E = Σ_i e_{Z_i} + scale · (Σ_{i<j} φ_ij + Σ_i Σ_{j<k} ψ_i(j, k)).

* Pair term: φ(r; a, b) = ½ (g_ab(r) + g_ba(r)) · f_cut(r), where g(r) = MLP(Gaussian RBF(r))
  has one output per ordered species pair; φ is symmetric in (a, b).
* Triplet term: ψ_i(j, k) = Σ_{f,l} c_{f,l}(Z_i) w_f(r_ij; Z_j) w_f(r_ik; Z_k) cos^l θ_jik
  for l = 0..L (L = :data:`MAX_ANGULAR`), with radial functions
  w_f(r; Z) = MLP(Gaussian RBF(r))_{Z,f} · f_cut(r) and learned per-species coefficients c.
  It is evaluated in O(edges), without a triplet list, through Cartesian angular moments
  M_{i,f,l} = Σ_j w_f(r_ij) u_ij^{⊗l} (u_ij the unit vector to j; 3^l components): since
  ⟨u^{⊗l}, v^{⊗l}⟩ = (u·v)^l and u·u = 1,
  Σ_{j≠k} w_f(r_ij) w_f(r_ik) cos^l θ_jik = ‖M_{i,f,l}‖² − Σ_j w_f(r_ij)²,
  and Σ_{j<k} ψ_i(j, k) = ½ Σ_{f,l} c_{f,l}(Z_i) (‖M_{i,f,l}‖² − Σ_j w_f(r_ij)²).
  The angular moments are those of the atomic cluster expansion (Drautz, "Atomic cluster
  expansion for accurate and transferable interatomic potentials", Phys. Rev. B 99, 014104,
  2019), in Cartesian form and truncated at body order 3.

Every term carries the cosine cutoff, so energy and forces go to zero continuously as a
pair crosses r_c. There are no message-passing layers, so GNN-LRP does not apply; the model
serves as a faithful reference whose 2- and 3-body terms are known exactly
(:meth:`BodyOrdered.pair_term`, :meth:`BodyOrdered.triplet_term`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrel.graph import Graph, edge_lengths
from jaxrel.nn import MLP, RuleSet, cosine_cutoff, gaussian_rbf, safe_norm, shifted_softplus, unit_vectors

MAX_ANGULAR = 3
"""Highest power L of cos θ_jik in the triplet term."""

# Unique monomials x^a y^b z^c (a + b + c = l ≤ 3) in the order built by
# BodyOrdered.atomwise_output: their degree l and multinomial weight l! / (a! b! c!).
_MONOMIAL_DEGREE = (0, 1, 1, 1, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3)
_MONOMIAL_WEIGHT = (1., 1., 1., 1., 1., 1., 1., 2., 2., 2., 1., 1., 1., 3., 3., 3., 3., 3., 3., 6.)


class BodyOrdered(nnx.Module):
    """Body-ordered (2 + 3-body) energy model; see :class:`jaxrel.models.Potential` for the pure API.

    Species enter as species indices (positions in ``ModelConfig.species``, as given by
    :func:`jaxrel.models.potential.species_lookup`), not atomic numbers. Outputs are the
    network's dimensionless y; :class:`~jaxrel.models.potential.EnergyModel` multiplies them
    by its energy scale (eV) and adds the species shifts.

    Args:
        n_species: number of species S.
        cutoff: r_c, Å.
        n_features: number F of radial channels w_f of the triplet term (and the hidden
            width of both radial MLPs).
        n_interactions: unused (there are no message-passing layers); accepted so that every
            architecture has one constructor signature. ``ModelConfig`` stores 1.
        n_rbf: number of Gaussian radial basis functions.
    """

    def __init__(self, n_species: int, cutoff: float, n_features: int, n_interactions: int,
                 n_rbf: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        del n_interactions
        self.cutoff, self.n_rbf, self.n_species, self.n_features = cutoff, n_rbf, n_species, n_features
        self.pair = MLP(n_rbf, n_features, n_species * n_species, shifted_softplus, rngs=rngs,
                        param_dtype=param_dtype)
        self.radial = MLP(n_rbf, n_features, n_species * n_features, shifted_softplus, rngs=rngs,
                          param_dtype=param_dtype)
        n_coefficients = n_features * (MAX_ANGULAR + 1)
        self.triplet_coefficients = nnx.Param(
            jax.random.normal(rngs.params(), (n_species, n_features, MAX_ANGULAR + 1), param_dtype)
            / n_coefficients)

    def _pair(self, r: jax.Array, z_i: jax.Array, z_j: jax.Array) -> jax.Array:
        """φ(r; z_i, z_j) for (n,) distances (Å) and species indices: (n,), 0 beyond r_c."""
        g = self.pair(gaussian_rbf(r, self.cutoff, self.n_rbf), RuleSet("identity"))
        g = g.reshape(r.shape[0], self.n_species, self.n_species)
        rows = jnp.arange(r.shape[0])
        return 0.5 * (g[rows, z_i, z_j] + g[rows, z_j, z_i]) * cosine_cutoff(r, self.cutoff)

    def _radial(self, r: jax.Array, z_j: jax.Array) -> jax.Array:
        """w_f(r; z_j) for (n,) distances (Å) and neighbour species indices: (n, F), 0 beyond r_c."""
        w = self.radial(gaussian_rbf(r, self.cutoff, self.n_rbf), RuleSet("identity"))
        w = w.reshape(r.shape[0], self.n_species, self.n_features)[jnp.arange(r.shape[0]), z_j]
        return w * cosine_cutoff(r, self.cutoff)[:, None]

    def atomwise_output(self, graph: Graph, species_index: jax.Array) -> jax.Array:
        """y_i = ½ Σ_j φ_ij + Σ_{j<k} ψ_i(j, k) of one frame, dimensionless: (n_atoms,).

        Padded edges (``edge_mask`` False) contribute nothing; padded atoms get whatever
        their (absent) edges give, 0, and are masked by the caller anyway.

        Args:
            graph: one frame (unbatched; vmap for batches).
            species_index: (n_atoms,) int species indices.
        """
        n_atoms = species_index.shape[0]
        vectors, r = edge_lengths(graph)
        mask = graph.edge_mask
        z_i, z_j = species_index[graph.receivers], species_index[graph.senders]
        n_edges = r.shape[0]
        rbf = gaussian_rbf(r, self.cutoff, self.n_rbf)
        f_cut = cosine_cutoff(r, self.cutoff)
        g = self.pair(rbf, RuleSet("identity"))
        w = self.radial(rbf, RuleSet("identity"))
        if self.n_species == 1:  # no species gathers needed
            phi = g[:, 0] * f_cut
            c_edge = self.triplet_coefficients[...][0]  # (F, L+1), same for every edge
        else:
            g = g.reshape(n_edges, self.n_species, self.n_species)
            rows = jnp.arange(n_edges)
            phi = 0.5 * (g[rows, z_i, z_j] + g[rows, z_j, z_i]) * f_cut
            w = w.reshape(n_edges, self.n_species, self.n_features)[rows, z_j]
            c_edge = self.triplet_coefficients[...][z_i]  # (n_edges, F, L+1)
        w = jnp.where(mask[:, None], w * f_cut[:, None], 0.0)  # (n_edges, F)
        phi = jnp.where(mask, phi, 0.0)

        # Per-edge scalar part: ½ φ_ij − ½ Σ_f (Σ_l c_{f,l}(Z_i)) w_f(r_ij)² (the diagonal
        # j = k terms removed from ‖M_{i,f,l}‖², using u·u = 1).
        diagonal = jnp.sum(jnp.sum(c_edge, axis=-1) * (w * w), axis=-1)
        scalar = jax.ops.segment_sum(0.5 * (phi - diagonal), graph.receivers,
                                     num_segments=n_atoms)

        # ‖Σ_j w_j u_j^{⊗l}‖² = Σ_α (l! / α!) (Σ_j w_j u_j^α)² over the unique monomials u^α
        # of degree l: 1 + 3 + 6 + 10 = 20 components instead of 1 + 3 + 9 + 27.
        unit = unit_vectors(vectors, r)
        x, y, z = unit[:, 0], unit[:, 1], unit[:, 2]
        xx, yy, zz, xy, xz, yz = x * x, y * y, z * z, x * y, x * z, y * z
        monomials = jnp.stack([
            jnp.ones_like(x),
            x, y, z,
            xx, yy, zz, xy, xz, yz,
            xx * x, yy * y, zz * z, xx * y, xx * z, yy * x, yy * z, zz * x, zz * y, xy * z,
        ], axis=-1)  # (n_edges, 20)
        # Layout (n_edges, 20, F): the scatter and its transpose are fastest with F minor.
        moment = jax.ops.segment_sum(monomials[:, :, None] * w[:, None, :], graph.receivers,
                                     num_segments=n_atoms)  # (n_atoms, 20, F)
        c = jnp.swapaxes(self.triplet_coefficients[...][:, :, list(_MONOMIAL_DEGREE)], 1, 2)  # (S, 20, F)
        c = c * jnp.asarray(_MONOMIAL_WEIGHT, c.dtype)[:, None]
        triplet = 0.5 * jnp.sum(c[species_index] * (moment * moment), axis=(1, 2))
        return scalar + triplet

    def pair_term(self, r: jax.Array, z_i: jax.Array, z_j: jax.Array) -> jax.Array:
        """φ(r; z_i, z_j) of one pair, dimensionless (multiply by the energy scale for eV).

        Symmetric in (z_i, z_j) and 0 for r ≥ r_c. Use ``jax.vmap`` for many pairs.

        Args:
            r: () distance, Å.
            z_i, z_j: () int species indices.
        Returns:
            () the pair's term in Σ_{i<j} φ_ij.
        """
        return self._pair(jnp.reshape(r, (1,)), jnp.reshape(z_i, (1,)), jnp.reshape(z_j, (1,)))[0]

    def triplet_term(self, x_centre: jax.Array, x_j: jax.Array, x_k: jax.Array, z_centre: jax.Array,
                     z_j: jax.Array, z_k: jax.Array) -> jax.Array:
        """ψ_i(j, k) = Σ_{f,l} c_{f,l}(z_centre) w_f(r_ij; z_j) w_f(r_ik; z_k) cos^l θ_jik.

        Evaluated directly from the three positions (no angular moments): the term of one
        unordered neighbour pair {j, k} of centre i in Σ_i Σ_{j<k} ψ_i(j, k), dimensionless
        (multiply by the energy scale for eV). Symmetric in j ↔ k and 0 if either neighbour
        is at or beyond r_c. Free-space positions (no periodic images). Use ``jax.vmap`` for
        many triplets.

        Args:
            x_centre, x_j, x_k: (3,) positions, Å.
            z_centre, z_j, z_k: () int species indices.
        Returns:
            () the triplet's term.
        """
        d = jnp.stack([x_j - x_centre, x_k - x_centre])  # (2, 3)
        r = safe_norm(d)
        w = self._radial(r, jnp.stack([z_j, z_k]))  # (2, F)
        cos = jnp.dot(d[0], d[1]) / (r[0] * r[1])
        angular = jnp.stack([cos ** l for l in range(MAX_ANGULAR + 1)])  # (L+1,)
        c = self.triplet_coefficients[...][z_centre]  # (F, L+1)
        return jnp.sum(c * (w[0] * w[1])[:, None] * angular[None, :])
