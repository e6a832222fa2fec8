"""SchNet (Schütt et al., J. Chem. Phys. 2018, arXiv:1712.06113) as a Flax NNX module.

h⁽⁰⁾ = embed(Z); h⁽ᵗ⁾ = h⁽ᵗ⁻¹⁾ + interaction_t(h⁽ᵗ⁻¹⁾) with continuous-filter
convolutions m_i = Σ_j (W_in h_j) ⊙ W_t(r_ij), W_t = Dense∘ssp∘Dense(Gaussian RBF(r_ij))
· f_cut(r_ij); readout E_i = scale · MLP(h_i⁽ᵀ⁾) + e_{Z_i}.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrel.graph import Graph, edge_lengths
from jaxrel.nn import MLP, RuleSet, cosine_cutoff, gaussian_rbf, shifted_softplus


class Interaction(nnx.Module):
    """One residual continuous-filter interaction block (node path rule-aware)."""

    def __init__(self, n_features: int, n_rbf: int, *, rngs: nnx.Rngs, param_dtype):
        self.in2f = nnx.Linear(n_features, n_features, use_bias=False, rngs=rngs,
                               param_dtype=param_dtype)
        self.filter = MLP(n_rbf, n_features, n_features, shifted_softplus, rngs=rngs,
                          param_dtype=param_dtype)
        self.f2out = MLP(n_features, n_features, n_features, shifted_softplus, rngs=rngs,
                         param_dtype=param_dtype)

    def edge_weights(self, rbf, fcut):
        """Filters W(r_ij) · f_cut(r_ij), (n_edges, F): distances only, fixed edge weights for every rule set."""
        return self.filter(rbf, RuleSet("identity")) * fcut[:, None]

    def pre(self, h, rules: RuleSet):
        """Node-wise part before the gather: x = W_in h, (n_atoms, F)."""
        return rules.dense(self.in2f, h)

    def post(self, h, x_sent, graph: Graph, w, rules: RuleSet):
        """h + f2out(Σ_j x_j ⊙ W(r_ij)) from the gathered x_sent = x[senders], (n_edges, F)."""
        m = jax.ops.segment_sum(x_sent * w, graph.receivers, num_segments=h.shape[0])
        return h + self.f2out(m, rules)


class SchNet(nnx.Module):
    """SchNet energy model; see :class:`jaxrel.models.Potential` for the pure API."""

    def __init__(self, n_species: int, cutoff: float, n_features: int, n_interactions: int,
                 n_rbf: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.cutoff, self.n_rbf = cutoff, n_rbf
        self.embedding = nnx.Embed(n_species, n_features, rngs=rngs, param_dtype=param_dtype)
        self.interactions = nnx.List([Interaction(n_features, n_rbf, rngs=rngs,
                                                  param_dtype=param_dtype)
                                      for _ in range(n_interactions)])
        self.readout = MLP(n_features, n_features // 2, 1, shifted_softplus, rngs=rngs,
                           param_dtype=param_dtype)

    def embed(self, species_index: jax.Array) -> jax.Array:
        """h⁽⁰⁾, (n_atoms, n_features)."""
        return self.embedding(species_index)

    def message_functions(self, graph: Graph, rules: RuleSet):
        """Per-layer message-passing split of one frame (see :class:`jaxrel.models.Potential`).

        Layer t is h⁽ᵗ⁾ = post_t(h⁽ᵗ⁻¹⁾, pre_t(h⁽ᵗ⁻¹⁾)[senders]). Features are (n_atoms,
        n_features); y is the per-atom readout output (n_atoms,). Distance-only quantities
        (filters, cutoff) are computed once and closed over.
        """
        _, r = edge_lengths(graph)
        fcut = cosine_cutoff(r, self.cutoff) * graph.edge_mask
        rbf = gaussian_rbf(r, self.cutoff, self.n_rbf)
        n_layers = len(self.interactions)

        def split(t):
            block, layer_rules = self.interactions[t], rules.at_layer(t + 1)
            w = block.edge_weights(rbf, fcut)
            return (lambda h: block.pre(h, layer_rules),
                    lambda h, x_sent: block.post(h, x_sent, graph, w, layer_rules))

        def readout(h):
            return self.readout(h, rules.at_layer(n_layers + 1))[:, 0]

        return [split(t) for t in range(n_layers)], readout
