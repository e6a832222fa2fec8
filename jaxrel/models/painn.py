"""PaiNN (Schütt, Unke, Gastegger, ICML 2021, arXiv:2102.03150) as a Flax NNX module.

Scalar features s_i ∈ R^F and vector features v_i ∈ R^{3×F} (v⁽⁰⁾ = 0). Message:
φ(s_j) ⊙ W(r_ij) split into (a, b, c); Δs_i = Σ_j a, Δv_i = Σ_j b ⊙ v_j + c ⊙ r̂_ij.
Update: U v, V v; (d, e, f) = MLP([s, ‖V v‖]); Δv = d ⊙ U v, Δs = f + e ⊙ ⟨U v, V v⟩.
Readout E_i = scale · MLP(s_i) + e_{Z_i}.

Relevance policy (products of node-dependent factors, see jaxrel.nn.rules): in
b ⊙ v_j, d ⊙ U v and e ⊙ ⟨U v, V v⟩ the scalar gates b, d, e (and V v) are the frozen
factor; c ⊙ r̂_ij is linear in c (r̂ is a fixed edge weight); vector norms use
v · sg(v/‖v‖). Gradient × input then counts each term once, and with GI rules and no
biases the walk relevances sum to the energy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrel.graph import Graph, edge_lengths
from jaxrel.nn import MLP, RuleSet, cosine_cutoff, sinc_rbf, unit_vectors


class Message(nnx.Module):
    def __init__(self, n_features: int, n_rbf: int, *, rngs: nnx.Rngs, param_dtype):
        self.phi = MLP(n_features, n_features, 3 * n_features, jax.nn.silu, rngs=rngs,
                       param_dtype=param_dtype)
        self.filter = nnx.Linear(n_rbf, 3 * n_features, rngs=rngs, param_dtype=param_dtype)

    def edge_weights(self, rbf, fcut):
        """W(r_ij) · f_cut(r_ij), (n_edges, 3F): distances only, fixed edge weights."""
        return self.filter(rbf) * fcut[:, None]

    def pre(self, s, v, rules: RuleSet):
        """Node-wise part before the gather: (φ(s) (n_atoms, 3F), v (n_atoms, 3, F))."""
        return self.phi(s, rules), v

    def post(self, s, v, sent, graph: Graph, w, unit, rules: RuleSet):
        """(s + Σ_j a, v + Σ_j b ⊙ v_j + c ⊙ r̂_ij) from the gathered (φ(s)[senders], v[senders])."""
        n = s.shape[0]
        phi_sent, v_sent = sent
        a, b, c = jnp.split(phi_sent * w, 3, axis=-1)
        # c ⊙ r̂: r̂ depends on distances only (an edge weight), so c is not a frozen gate.
        dv = rules.product(b[:, None, :], v_sent) + c[:, None, :] * unit[:, :, None]
        ds = jax.ops.segment_sum(a, graph.receivers, num_segments=n)
        dv = jax.ops.segment_sum(dv, graph.receivers, num_segments=n)
        return s + ds, v + dv


class Update(nnx.Module):
    def __init__(self, n_features: int, *, rngs: nnx.Rngs, param_dtype):
        self.u = nnx.Linear(n_features, n_features, use_bias=False, rngs=rngs,
                            param_dtype=param_dtype)
        self.w = nnx.Linear(n_features, n_features, use_bias=False, rngs=rngs,
                            param_dtype=param_dtype)
        self.mlp = MLP(2 * n_features, n_features, 3 * n_features, jax.nn.silu, rngs=rngs,
                       param_dtype=param_dtype)

    def __call__(self, s, v, rules: RuleSet):
        uv, wv = self.u(v), self.w(v)
        x = self.mlp(jnp.concatenate([s, rules.norm(wv, axis=-2)], axis=-1), rules)
        d, e, f = jnp.split(x, 3, axis=-1)
        dv = rules.product(d[:, None, :], uv)
        ds = f + rules.product(e, jnp.sum(rules.product(wv, uv), axis=-2))
        return s + ds, v + dv


class PaiNN(nnx.Module):
    """PaiNN energy model; see :class:`jaxrel.models.Potential` for the pure API."""

    def __init__(self, n_species: int, cutoff: float, n_features: int, n_interactions: int,
                 n_rbf: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.cutoff, self.n_rbf, self.n_features = cutoff, n_rbf, n_features
        self.embedding = nnx.Embed(n_species, n_features, rngs=rngs, param_dtype=param_dtype)
        self.messages = nnx.List([Message(n_features, n_rbf, rngs=rngs, param_dtype=param_dtype)
                                  for _ in range(n_interactions)])
        self.updates = nnx.List([Update(n_features, rngs=rngs, param_dtype=param_dtype)
                                 for _ in range(n_interactions)])
        self.readout = MLP(n_features, n_features // 2, 1, jax.nn.silu, rngs=rngs,
                           param_dtype=param_dtype)

    def embed(self, species_index: jax.Array) -> jax.Array:
        """Scalar features s⁽⁰⁾, (n_atoms, n_features); v⁽⁰⁾ = 0."""
        return self.embedding(species_index)

    def message_functions(self, graph: Graph, rules: RuleSet):
        """Per-layer message-passing split of one frame (see :class:`jaxrel.models.Potential`).

        Layer t is h⁽ᵗ⁾ = post_t(h⁽ᵗ⁻¹⁾, pre_t(h⁽ᵗ⁻¹⁾)[senders]). h⁽⁰⁾ is the scalar embedding
        s⁽⁰⁾ (n_atoms, F) (v⁽⁰⁾ = 0 is created by layer 1); later states are (s (n_atoms, F),
        v (n_atoms, 3, F)); the update block is node-wise, inside post; y is (n_atoms,).
        """
        vec, r = edge_lengths(graph)
        fcut = cosine_cutoff(r, self.cutoff) * graph.edge_mask
        rbf = sinc_rbf(r, self.cutoff, self.n_rbf)
        unit = unit_vectors(vec, r)
        n_layers = len(self.messages)

        def state(t, h):
            return (h, jnp.zeros((h.shape[0], 3, h.shape[1]), h.dtype)) if t == 0 else h

        def split(t):
            message, layer_rules = self.messages[t], rules.at_layer(t + 1)
            w = message.edge_weights(rbf, fcut)

            def post(h, sent):
                s, v = message.post(*state(t, h), sent, graph, w, unit, layer_rules)
                return self.updates[t](s, v, layer_rules)

            return lambda h: message.pre(*state(t, h), layer_rules), post

        def readout(h):
            return self.readout(h[0], rules.at_layer(n_layers + 1))[:, 0]

        return [split(t) for t in range(n_layers)], readout
