"""Propagation rules as forward substitution, and per-layer masks.

A rule replaces a nonlinearity *for the backward pass only*: its forward value is
unchanged, so the model's energy stays exactly the same, but gradient × input of the
substituted network distributes relevance the way the rule prescribes (Schnake et al.,
"Higher-order explanations of graph neural networks via relevant walks", TPAMI 2022,
arXiv:2006.03589; the forward-substitution trick follows Montavon et al. 2019, "Layer-wise
relevance propagation: an overview").

A :class:`RuleSet` is static data passed to a model's forward pass; the model routes
every node-path nonlinearity through it. Filter networks, radial bases and cutoff
functions depend only on distances and are left alone (fixed edge weights).

Rules implemented here:

* ``identity`` — the plain model (gradients are ordinary gradients).
* ``gi`` — gradient × input / LRP-0: an activation y = σ(z) becomes z · sg(σ(z)/z)
  (a frozen gate, 0/0 handled by σ'(0)); products of two node-dependent factors
  a · b freeze the first factor (the gate) so relevance flows through b only (a
  degree-2 term is otherwise counted twice by gradient × input); vector norms
  ‖v‖ become v · sg(v/‖v‖).
* ``lrp-eps`` — as ``gi``, and every node-path dense layer z = Wx + b passes relevance
  with a stabilised denominator: x_j w_jk R_k / (z_k + ε sign z_k) (Bach et al. 2015,
  PLoS ONE 10:e0130140). The ε share, and the bias share, stay in the layer.
* ``lrp-gamma`` — as ``gi``, and every node-path dense layer favours contributions of the
  output's sign: R_j = Σ_k (z_jk + γ z_jk^±) / Σ_j' (z_j'k + γ z_j'k^±) · R_k with
  z_jk = x_j w_jk and z^± its part of the sign of z_k (Montavon et al. 2019, the
  sign-aware form used for GNN-LRP by Schnake et al. 2022). γ = 0 is LRP-0.

Layers acting on equivariant vector channels (PaiNN's U, V) keep LRP-0 under every
rule: a sign-based rule on Cartesian components would not be rotation invariant.

Policy for equivariant tensor-product models (NequIP, :mod:`jaxrel.models.nequip`; the
published GNN-LRP code instead detaches every l > 0 channel of SO3net):

* Spherical harmonics Y(r̂_ij), radial weights w(r_ij) and cutoffs depend only on the
  geometry and act as edge weights, so each tensor product x_j ⊗ Y(r̂_ij) weighted by
  w(r_ij) is linear in the node features x_j: no rule is needed, and relevance flows
  through every l, including l > 0.
* Gate nonlinearities σ(g) · v freeze the gate (:meth:`RuleSet.product`); the scalars'
  activations are frozen gates (:meth:`RuleSet.activation`).
* Norms of irreps use v · sg(v/‖v‖) (:meth:`RuleSet.norm`).
* LRP-ε and LRP-γ act only on scalar (0e → 0e) blocks (:meth:`RuleSet.linear`); blocks with
  l > 0 keep LRP-0, so relevance stays rotation invariant.

Under every rule the forward value is unchanged (tested for every model and rule).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp

from jaxrel.nn.functional import safe_norm

sg = jax.lax.stop_gradient


RULE_NAMES = ("identity", "gi", "lrp-eps", "lrp-gamma")


@dataclass(frozen=True)
class RuleSet:
    """How nonlinearities propagate relevance (forward values never change).

    Attributes:
        name: one of ``"identity"``, ``"gi"``, ``"lrp-eps"``, ``"lrp-gamma"``.
        epsilon: ε of ``lrp-eps`` (in units of the layer's pre-activations).
        gamma: γ of ``lrp-gamma``: one value for every dense layer, or a tuple with
            one value per interaction layer (index t − 1; the readout uses the last).
    """

    name: str = "identity"
    epsilon: float = 0.01
    gamma: float | tuple[float, ...] = 0.25

    def __post_init__(self):
        if self.name not in RULE_NAMES:
            raise ValueError(f"unknown rule set {self.name!r}; known: {', '.join(RULE_NAMES)}")
        gammas = self.gamma if isinstance(self.gamma, tuple) else (self.gamma,)
        if not (self.epsilon >= 0 and math.isfinite(self.epsilon)):
            raise ValueError(f"epsilon (--epsilon) is {self.epsilon}; LRP-ε needs a finite ε ≥ 0")
        if not all(g >= 0 and math.isfinite(g) for g in gammas):
            raise ValueError(f"gamma (--gamma) is {self.gamma}; LRP-γ needs a finite γ ≥ 0")

    def at_layer(self, t: int) -> "RuleSet":
        """The rule set with the γ of interaction layer ``t`` (1-based; larger t: last γ)."""
        if not isinstance(self.gamma, tuple):
            return self
        return RuleSet(self.name, self.epsilon, self.gamma[min(t, len(self.gamma)) - 1])

    def dense(self, layer, x: jax.Array) -> jax.Array:
        """An ``nnx.Linear`` applied to x, with the rule's relevance redistribution."""
        return self.linear(x, layer.kernel[...], None if layer.bias is None else layer.bias[...])

    def linear(self, x: jax.Array, kernel: jax.Array, bias: jax.Array | None = None) -> jax.Array:
        """z = x W + b, (…, d_in) @ (d_in, d_out), with the rule's relevance redistribution.

        The forward value is x W + b under every rule; only the gradient changes.
        """
        z = x @ kernel if bias is None else x @ kernel + bias
        if self.name in ("identity", "gi"):
            return z
        if self.name == "lrp-eps":
            denominator = z + self.epsilon * jnp.where(z >= 0, 1.0, -1.0)
            share = z / denominator
            return z * sg(share) + sg(z - z * share)
        gamma = self.gamma[-1] if isinstance(self.gamma, tuple) else self.gamma
        xp, xn = jnp.maximum(x, 0), jnp.minimum(x, 0)
        wp, wn = jnp.maximum(kernel, 0), jnp.minimum(kernel, 0)
        positive = xp @ wp + xn @ wn   # contributions z_jk > 0
        negative = xp @ wn + xn @ wp   # contributions z_jk < 0
        p = z + gamma * jnp.where(z >= 0, positive, negative)
        safe_p = jnp.where(p == 0, 1.0, p)
        share = jnp.where(p == 0, 0.0, z / safe_p)
        # d/dx of p · sg(z/p) = (W + γ W^±) z/p: relevance in proportion to z_jk + γ z_jk^±.
        return p * sg(share) + sg(z - p * share)

    def activation(self, fn: Callable[[jax.Array], jax.Array], z: jax.Array) -> jax.Array:
        """σ(z), or under ``gi`` the frozen gate z · sg(σ(z)/z) (σ'(0) where z = 0)."""
        y = fn(z)
        if self.name == "identity":
            return y
        nonzero = z != 0
        safe_z = jnp.where(nonzero, z, 1.0)
        slope_at_zero = jax.grad(lambda t: fn(t).sum())(jnp.zeros((), z.dtype))
        gate = jnp.where(nonzero, y / safe_z, slope_at_zero)
        # σ(0) may be nonzero (a bias-like constant); it is kept as a frozen offset.
        return z * sg(gate) + sg(jnp.where(nonzero, 0.0, y))

    def product(self, gate: jax.Array, x: jax.Array) -> jax.Array:
        """gate · x; under ``gi`` the gate is frozen so relevance flows through x."""
        return (gate if self.name == "identity" else sg(gate)) * x

    def norm(self, v: jax.Array, axis: int = -2) -> jax.Array:
        """‖v‖ over ``axis`` (NaN-safe); under ``gi`` written as Σ v · sg(v/‖v‖)."""
        n = safe_norm(v, axis=axis, keepdims=True)
        if self.name == "identity":
            return jnp.squeeze(n, axis)
        unit = jnp.where(n > 0, v / jnp.where(n > 0, n, 1.0), 0.0)
        return jnp.sum(v * sg(unit), axis=axis)


RULES = {name: RuleSet(name) for name in RULE_NAMES}


def resolve_rules(rules: RuleSet | str) -> RuleSet:
    """A :class:`RuleSet` from itself or its name (default ε and γ).

    Raises:
        ValueError: an unknown rule name (the message lists the known ones).
    """
    if isinstance(rules, RuleSet):
        return rules
    if rules not in RULES:
        raise ValueError(f"unknown rule {rules!r}; known: {', '.join(RULE_NAMES)}")
    return RULES[rules]
