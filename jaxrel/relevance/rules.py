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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp

from jaxrel.graph import safe_norm

sg = jax.lax.stop_gradient


@dataclass(frozen=True)
class RuleSet:
    """How nonlinearities propagate relevance (forward values never change).

    Attributes:
        name: ``"identity"`` or ``"gi"``.
    """

    name: str = "identity"

    def __post_init__(self):
        if self.name not in ("identity", "gi"):
            raise ValueError(f"unknown rule set {self.name!r}; known: 'identity', 'gi'")

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


RULES = {name: RuleSet(name) for name in ("identity", "gi")}


def apply_mask(h: jax.Array, mask: jax.Array | None) -> jax.Array:
    """h ← m ⊙ h + (1 − m) ⊙ sg(h): relevance flows only through atoms with m = 1.

    Args:
        h: (n_atoms, ...) features after a layer.
        mask: (n_atoms,) float per-atom mask (one-hot for walks, indicator for
            subgraphs; Xiong et al. ICML 2022), or None for no mask.

    Returns:
        Features with the same forward value as ``h``.
    """
    if mask is None:
        return h
    m = mask.reshape(mask.shape + (1,) * (h.ndim - 1)).astype(h.dtype)
    return m * h + (1 - m) * sg(h)
