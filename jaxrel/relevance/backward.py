"""Masked relevance backward passes: one forward, many masked backwards (vmapped, chunked).

A masked relevance pass puts per-layer atom masks m_0..m_T into the rule-substituted
network, h⁽ᵗ⁾ ← m_t ⊙ h⁽ᵗ⁾ + (1 − m_t) ⊙ sg(h⁽ᵗ⁾), and reads the relevance of each
start atom as Σ_features h⁽⁰⁾ ⊙ ∂E/∂h⁽⁰⁾ (Schnake et al. TPAMI 2022, arXiv:2006.03589;
Xiong et al. ICML 2022 for subgraph masks). Masks leave the forward value unchanged,
so the forward pass is run once with ``jax.vjp`` per layer, and only the backward pass
(linear in the cotangent) is repeated for each mask: cotangent ← m_{t-1} ⊙ vjp_t(m_t ⊙ cotangent).

Masks are given compactly as per-layer atom sets, shape (n_masks, T + 1, k) int with −1
for unused slots; ``all_start=True`` makes m_0 all ones (every start atom at once).
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from jaxrel.graph import Graph
from jaxrel.nn import RuleSet


class LayeredPotential(Protocol):
    """What the relevance engine needs of a potential (e.g. :class:`jaxrel.models.Potential`).

    ``config.n_interactions`` is the number T of message-passing layers; ``embedding``
    gives h⁽⁰⁾ (n_atoms, F) of one frame; ``layer_functions`` splits the rule-substituted
    forward pass of one frame into T per-layer maps h⁽ᵗ⁻¹⁾ ↦ h⁽ᵗ⁾ (arrays or pytrees with
    atoms on axis 0) and a readout h⁽ᵀ⁾ ↦ atomwise energies (n_atoms,) eV (the masked
    passes here); ``message_functions`` splits each layer at its gather into node-wise
    ``pre`` and ``post(h, pre(h)[senders])`` (the walk chain, :mod:`jaxrel.relevance.chain`);
    ``atomwise_energy_from_embedding`` is the whole pass from h⁽⁰⁾. The potential must be
    hashable (it is a static argument of jitted functions).
    """

    config: Any

    def embedding(self, params, graph: Graph) -> jax.Array: ...

    def layer_functions(self, params, graph: Graph,
                        rules: RuleSet) -> tuple[list[Callable], Callable[[Any], jax.Array]]: ...

    def message_functions(self, params, graph: Graph,
                          rules: RuleSet) -> tuple[list[tuple[Callable, Callable]], Callable[[Any], jax.Array]]: ...

    def atomwise_energy_from_embedding(self, params, h0: jax.Array, graph: Graph, rules: RuleSet) -> jax.Array: ...


def _indicator(index: jax.Array, n_atoms: int, dtype) -> jax.Array:
    """(k,) atom indices with −1 padding → (n_atoms,) 0/1 mask."""
    return jnp.zeros(n_atoms, dtype).at[jnp.where(index >= 0, index, n_atoms)].set(1.0, mode="drop")


def _mask_cotangent(cotangent, mask):
    return jax.tree.map(lambda c: c * mask.reshape(mask.shape + (1,) * (c.ndim - 1)), cotangent)


@partial(jax.jit, static_argnames=("potential", "rules", "all_start", "chunk_size"))
def masked_relevance(potential, params, graph: Graph, layer_sets: jax.Array, rules: RuleSet,
                     all_start: bool, chunk_size: int | None = None):
    """Per-start-atom relevance for many masks of one frame.

    Args:
        potential: a :class:`LayeredPotential` (e.g. :class:`jaxrel.models.Potential`).
        params: its params.
        graph: one (unbatched) frame.
        layer_sets: (n_masks, T + 1, k) int32 atom sets per layer, −1 = unused; row 0 is
            ignored when ``all_start``.
        rules: the rule set.
        all_start: m_0 = all ones.
        chunk_size: masks per vmapped backward chunk (bounds memory); None = all at once.

    Returns:
        ``(relevance (n_masks, n_atoms) eV, energy () eV, gradient_x_input (n_atoms,) eV)``
        where ``relevance[m, i]`` is the relevance reaching start atom i under mask m and
        ``gradient_x_input`` is the unmasked per-atom Σ h⁽⁰⁾ ⊙ ∂E/∂h⁽⁰⁾.
    """
    h0 = potential.embedding(params, graph)
    layers, energy_readout = potential.layer_functions(params, graph, rules)
    vjps, h = [], h0
    for layer in layers:
        h, vjp = jax.vjp(layer, h)
        vjps.append(vjp)
    energy, readout_vjp = jax.vjp(lambda x: energy_readout(x).sum(), h)
    top = readout_vjp(jnp.ones((), energy.dtype))[0]
    n_atoms = graph.n_atoms

    def backward(masks):
        cotangent = _mask_cotangent(top, masks[-1])
        for t in reversed(range(len(layers))):
            cotangent = _mask_cotangent(vjps[t](cotangent)[0], masks[t])
        return jnp.sum(h0 * cotangent, axis=-1)

    def one(sets):
        masks = jax.vmap(lambda s: _indicator(s, n_atoms, h0.dtype))(sets)
        if all_start:
            masks = masks.at[0].set(1.0)
        return backward(masks)

    if chunk_size is None:
        relevance = jax.vmap(one)(layer_sets)
    else:
        relevance = jax.lax.map(one, layer_sets, batch_size=chunk_size)
    everything = jnp.ones((len(layers) + 1, n_atoms), h0.dtype)
    return relevance, energy, backward(everything)


def padded_layer_sets(layer_sets: np.ndarray, step: int = 64) -> np.ndarray:
    """Pad the mask count with empty masks (rows of −1) to a size class: a power of two
    below ``step``, else a multiple of ``step``.

    Frames with different numbers of pairs/triplets then share compiled code, and at
    most ``step`` − 1 wasted passes are added.
    """
    n = len(layer_sets)
    size = 1 << max(0, (n - 1).bit_length())
    if size > step:
        size = -(-n // step) * step
    pad = np.full((size - n,) + layer_sets.shape[1:], -1, layer_sets.dtype)
    return np.concatenate([layer_sets, pad])
