"""Rule-aware layers: dense and activation stacks whose node path follows a :class:`RuleSet`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrel.nn.rules import RuleSet


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
