"""A NequIP-style equivariant tensor-product potential (Batzner et al., Nat. Commun. 2022,
arXiv:2101.03164) on e3nn-jax, as a Flax NNX module.

Node features are irreps F_0×0e + F_1×1o + … + F_L×Le (one parity per l, the parity of the
spherical harmonics: an O(3)-equivariant model without pseudo-tensors). h⁽⁰⁾ = embed(Z), F_0
scalars. Interaction t (residual through a self-connection)::

    x = Linear_up(h)                                        (per-l channel mixing)
    m_ij = w(r_ij) ⊙ [x_j ⊗ Y(r̂_ij)]                      (e3nn tensor product, Y up to l = L,
                                                             kept: the irreps the layer outputs)
    a_i = Σ_j m_ij / √10                                    (10: a typical neighbour count)
    h' = SelfConnection(h) + Gate(Linear_down(a_i))

w(r) = MLP(Bessel basis sin(nπr/r_c)/r) · f_cut(r), one weight per tensor-product path and
channel; the gate (Weiler et al. 2018, arXiv:1807.02547) is SiLU on the scalars and
sigmoid(g) · v for each l > 0 channel. The last interaction keeps only the scalars, which
the readout maps to E_i = scale · MLP(h_i) + e_{Z_i}.

Differences from NequIP as published: one parity per l; a plain (not species-dependent)
linear self-connection; messages divided by √10 rather than the data's mean neighbour
count; a cosine cutoff instead of the polynomial envelope.

Relevance policy (see :mod:`jaxrel.nn.rules`):

* Y(r̂_ij), the radial weights w(r_ij) and f_cut depend only on the geometry and act as
  fixed edge weights, so every tensor product x_j ⊗ Y(r̂_ij) is linear in the node
  features x_j and needs no rule.
* The gate freezes its scalar factor: sigmoid(g) · v → sg(sigmoid(g)) · v under every rule
  but ``identity``, so relevance flows through v and gradient × input counts the product
  once; SiLU on the scalars is a frozen gate like every activation.
* LRP-ε and LRP-γ act only on the scalar (0e → 0e) blocks of the linear layers and on the
  readout; blocks with l > 0 keep LRP-0, because a sign-based rule on the components of an
  l > 0 irrep would not be rotation invariant. Relevance is then rotation invariant.
* The model has no vector norms; :meth:`jaxrel.nn.RuleSet.norm` is the policy a norm would follow.

With GI rules and no biases the walk relevances sum to the energy (tested).
"""

from __future__ import annotations

import math

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrel.graph import Graph, edge_lengths
from jaxrel.nn import MLP, RuleSet, cosine_cutoff, sinc_rbf, unit_vectors

NEIGHBOUR_NORMALISATION = 1.0 / math.sqrt(10.0)
RADIAL_HIDDEN = 64  # hidden width of the radial network (NequIP's default)


def node_irreps(features_per_l: tuple[int, ...]) -> e3nn.Irreps:
    """F_0×0e + F_1×1o + F_2×2e + …: multiplicity F_l for l = 0..L, parity (−1)^l."""
    return e3nn.Irreps([(mul, (l, (-1) ** l)) for l, mul in enumerate(features_per_l) if mul > 0])


class EquivariantLinear(nnx.Module):
    """Per-irrep channel mixing irreps_in → irreps_out (no mixing across l, as e3nn's Linear).

    Weights (mul_in, mul_out) per irrep, scaled by 1/√mul_in; only the scalar block has a
    bias. Output irreps absent from the input are zero. The scalar block follows the rule's
    dense redistribution (LRP-ε/γ); l > 0 blocks stay linear (LRP-0).
    """

    def __init__(self, irreps_in: e3nn.Irreps, irreps_out: e3nn.Irreps, *, rngs: nnx.Rngs,
                 param_dtype, bias: bool = True):
        self.irreps_in, self.irreps_out = e3nn.Irreps(irreps_in).regroup(), e3nn.Irreps(irreps_out).regroup()
        mul_in = {ir: mul for mul, ir in self.irreps_in}
        self.weights = nnx.List([
            nnx.Param(jax.random.normal(rngs.params(), (mul_in[ir], mul), param_dtype))
            if ir in mul_in else None for mul, ir in self.irreps_out])
        scalars = [mul for mul, ir in self.irreps_out if ir.l == 0 and ir.p == 1]
        self.bias = nnx.Param(jnp.zeros(scalars[0], param_dtype)) if bias and scalars else None

    def __call__(self, x: e3nn.IrrepsArray, rules: RuleSet) -> e3nn.IrrepsArray:
        x = x.regroup()
        chunk_of = {ir: chunk for (_, ir), chunk in zip(x.irreps, x.chunks)}
        n = x.shape[:-1]
        chunks = []
        for (mul, ir), w in zip(self.irreps_out, self.weights):
            chunk = chunk_of.get(ir)
            if w is None or chunk is None:
                chunks.append(None)
                continue
            kernel = w[...] / math.sqrt(w.shape[0])
            if ir.l == 0 and ir.p == 1:
                bias = None if self.bias is None else self.bias[...]
                chunks.append(rules.linear(chunk[..., 0], kernel, bias)[..., None])
            else:
                chunks.append(jnp.einsum("...ui,uv->...vi", chunk, kernel))
        return e3nn.from_chunks(self.irreps_out, chunks, n, x.dtype)


class Interaction(nnx.Module):
    """One NequIP interaction: tensor-product convolution, gate, self-connection."""

    def __init__(self, irreps_in: e3nn.Irreps, irreps_out: e3nn.Irreps, lmax: int, n_rbf: int, *,
                 rngs: nnx.Rngs, param_dtype):
        self.irreps_in, self.irreps_out = irreps_in, irreps_out
        self.keep = tuple(sorted({ir for _, ir in irreps_out}))  # paths to irreps the layer outputs
        sh = e3nn.Irreps.spherical_harmonics(lmax)
        probe = e3nn.tensor_product(e3nn.zeros(irreps_in, ()), e3nn.zeros(sh, ()), filter_ir_out=self.keep)
        self.tp_irreps = probe.irreps
        gated = e3nn.Irreps([(mul, ir) for mul, ir in irreps_out if ir.l > 0])
        scalars = sum(mul for mul, ir in irreps_out if ir.l == 0)
        self.gate_irreps = e3nn.Irreps(f"{scalars + gated.num_irreps}x0e") + gated
        self.n_scalars = scalars
        self.up = EquivariantLinear(irreps_in, irreps_in, rngs=rngs, param_dtype=param_dtype)
        self.filter = MLP(n_rbf, RADIAL_HIDDEN, self.tp_irreps.num_irreps, jax.nn.silu, rngs=rngs,
                          param_dtype=param_dtype)
        self.down = EquivariantLinear(self.tp_irreps, self.gate_irreps, rngs=rngs, param_dtype=param_dtype)
        self.skip = EquivariantLinear(irreps_in, irreps_out, rngs=rngs, param_dtype=param_dtype, bias=False)

    def gate(self, y: e3nn.IrrepsArray, rules: RuleSet) -> e3nn.IrrepsArray:
        """SiLU on the scalars; sigmoid(g_c) · v_c for each l > 0 channel c (gate frozen under rules)."""
        scalars_and_gates = y.filter(keep="0e").array
        s = rules.activation(jax.nn.silu, scalars_and_gates[..., :self.n_scalars])
        gates = jax.nn.sigmoid(scalars_and_gates[..., self.n_scalars:])
        vectors = y.filter(drop="0e")
        parts = [e3nn.IrrepsArray(f"{self.n_scalars}x0e", s)]
        if vectors.irreps.num_irreps:
            parts.append(e3nn.IrrepsArray(vectors.irreps, rules.product(
                _per_component(gates, vectors.irreps), vectors.array)))
        return e3nn.concatenate(parts)

    def edge_weights(self, rbf: jax.Array, fcut: jax.Array) -> jax.Array:
        """One weight per path and channel, (n_edges, n_paths): distances only (identity rules)."""
        return self.filter(rbf, RuleSet("identity")) * fcut[:, None]

    def pre(self, h: jax.Array, rules: RuleSet) -> jax.Array:
        """Node-wise part before the gather: Linear_up(h), (n_atoms, irreps_in.dim)."""
        return self.up(e3nn.IrrepsArray(self.irreps_in, h), rules).array

    def post(self, h: jax.Array, up_sent: jax.Array, graph: Graph, sh: e3nn.IrrepsArray,
             weights: jax.Array, rules: RuleSet) -> jax.Array:
        """SelfConnection(h) + Gate(Linear_down(Σ_j w ⊙ [up_j ⊗ Y(r̂_ij)])) from up_sent = up[senders]."""
        x = e3nn.IrrepsArray(self.irreps_in, h)
        messages = e3nn.tensor_product(e3nn.IrrepsArray(self.irreps_in, up_sent), sh,
                                       filter_ir_out=self.keep) * weights
        aggregated = e3nn.IrrepsArray(messages.irreps, jax.ops.segment_sum(
            messages.array, graph.receivers, num_segments=h.shape[0]) * NEIGHBOUR_NORMALISATION)
        out = self.gate(self.down(aggregated, rules), rules)
        return (self.skip(x, rules) + out).array


def _per_component(gates: jax.Array, irreps: e3nn.Irreps) -> jax.Array:
    """(…, num_irreps) gates repeated over each irrep's 2l + 1 components: (…, irreps.dim)."""
    repeats = np.concatenate([np.full(mul, ir.dim) for mul, ir in irreps])
    return jnp.repeat(gates, repeats, axis=-1, total_repeat_length=irreps.dim)


class NequIP(nnx.Module):
    """NequIP-style energy model; see :class:`jaxrel.models.Potential` for the pure API.

    Args:
        n_species, cutoff (Å), n_features (F_0, scalar channels), n_interactions, n_rbf: as
            for every architecture.
        lmax: largest rotation order L of the features and spherical harmonics.
        features_per_l: multiplicities (F_0, …, F_L); default F_0 for every l.
    """

    def __init__(self, n_species: int, cutoff: float, n_features: int, n_interactions: int,
                 n_rbf: int, *, lmax: int = 1, features_per_l: tuple[int, ...] | None = None,
                 rngs: nnx.Rngs, param_dtype=jnp.float32):
        features_per_l = tuple(features_per_l or (n_features,) * (lmax + 1))
        self.cutoff, self.n_rbf, self.lmax = cutoff, n_rbf, lmax
        self.embedding = nnx.Embed(n_species, n_features, rngs=rngs, param_dtype=param_dtype)
        hidden = node_irreps(features_per_l)
        irreps = [e3nn.Irreps(f"{n_features}x0e")] + [hidden] * (n_interactions - 1) + \
                 [e3nn.Irreps(f"{n_features}x0e")]
        self.interactions = nnx.List([
            Interaction(irreps[t], irreps[t + 1], lmax, n_rbf, rngs=rngs, param_dtype=param_dtype)
            for t in range(n_interactions)])
        self.readout = MLP(n_features, max(n_features // 2, 1), 1, jax.nn.silu, rngs=rngs,
                           param_dtype=param_dtype)

    def embed(self, species_index: jax.Array) -> jax.Array:
        """h⁽⁰⁾: F_0 scalar features, (n_atoms, n_features)."""
        return self.embedding(species_index)

    def message_functions(self, graph: Graph, rules: RuleSet):
        """Per-layer message-passing split of one frame (see :class:`jaxrel.models.Potential`).

        Layer t is h⁽ᵗ⁾ = post_t(h⁽ᵗ⁻¹⁾, pre_t(h⁽ᵗ⁻¹⁾)[senders]). States are plain arrays
        (n_atoms, irreps.dim) in e3nn-jax's layout: h⁽⁰⁾ and h⁽ᵀ⁾ are F_0 scalars, inner states
        F_0×0e + F_1×1o + …; y is (n_atoms,).
        """
        vec, r = edge_lengths(graph)
        fcut = cosine_cutoff(r, self.cutoff) * graph.edge_mask
        unit = unit_vectors(vec, r)
        sh = e3nn.spherical_harmonics(e3nn.Irreps.spherical_harmonics(self.lmax), unit, normalize=False)
        rbf = sinc_rbf(r, self.cutoff, self.n_rbf)
        n_layers = len(self.interactions)

        def split(t):
            block, layer_rules = self.interactions[t], rules.at_layer(t + 1)
            weights = block.edge_weights(rbf, fcut)
            return (lambda h: block.pre(h, layer_rules),
                    lambda h, up_sent: block.post(h, up_sent, graph, sh, weights, layer_rules))

        def readout(h):
            return self.readout(h, rules.at_layer(n_layers + 1))[:, 0]

        return [split(t) for t in range(n_layers)], readout
