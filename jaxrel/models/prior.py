"""A repulsive pair prior for coarse-grained potentials, and its fit to the data.

Coarse-grained (CG) data sample only the distances the molecules visit, so a network
trained by force matching has no reason to repel two beads pushed closer than the data
ever came, and CG MD can let beads overlap. The standard safeguard adds a fixed
repulsive pair term to the network (CGnet: Wang et al. 2019, ACS Cent. Sci. 5, 755,
arXiv:1812.01736; CGSchNet: Husic et al. 2020, J. Chem. Phys. 153, 194101,
arXiv:2007.11412), which uses the excluded-volume form ε (σ/r)^c. jaxrel's form, per species
pair (a, b)::

    φ_ab(r) = ε_ab (σ_ab / r)^12 · f_c(r)          f_c: the models' cosine cutoff at r_c

fitted to the training frames (:func:`fit_repulsive_prior`): σ_ab is the closest approach
of an a–b pair in the training data, and ε_ab = F_rms σ_ab / 12, so that the force of the
bare r⁻¹² term at the closest approach, 12 ε_ab / σ_ab, equals the RMS of the training forces.
The cutoff factor scales this down: for CG methane (σ = 3.13 Å, r_c = 5 Å) the prior's force is
0.38 F_rms at σ, 0.09 F_rms at σ + 0.3 Å and about 10 F_rms at 0.8 σ (notebook
04_coarse_grained), so it is weak inside the sampled range and a steep wall below it. Species pairs
never seen within the cutoff take the smallest σ of the pairs that were.

The prior is exactly pairwise, so the many-body expansion puts all of it into the 2-body
terms, and an explanation lists it as its own ``prior`` column of the 2-body table.
Units: Å, eV, eV/Å.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxrel.nn import cosine_cutoff

PRIORS = ("repulsive",)
"""Prior names ``ModelConfig.prior`` accepts (None: no prior)."""

EXPONENT = 12
"""The exponent c of ε (σ/r)^c."""


def repulsive_energy(r: jax.Array, sigma: jax.Array, epsilon: jax.Array, cutoff: float) -> jax.Array:
    """φ(r) = ε (σ/r)^12 f_c(r), eV, elementwise; 0 at and beyond the cutoff and for r = 0 (padding).

    Args:
        r: distances, Å (any shape); sigma, epsilon: broadcastable, Å and eV.
        cutoff: r_c, Å.
    """
    safe = jnp.where(r > 0, r, 1.0)
    return jnp.where(r > 0, epsilon * (sigma / safe) ** EXPONENT * cosine_cutoff(safe, cutoff), 0.0)


def fit_repulsive_prior(graph, species_list: tuple[int, ...], force_rms: float) -> tuple[np.ndarray, np.ndarray]:
    """σ_ab (closest approach) and ε_ab = F_rms σ_ab / 12 from the edges of training graphs.

    Args:
        graph: a batched :class:`jaxrel.graph.Graph` of the training frames (edges within the
            model's cutoff).
        species_list: the model's species (sorted atomic numbers or bead ids).
        force_rms: RMS of the training force components, eV/Å (> 0).

    Returns:
        ``(sigma, epsilon)``: (S, S) float64 symmetric arrays, Å and eV, S = len(species_list).

    Raises:
        ValueError: no edge in the training graphs (nothing to fit), or ``force_rms`` ≤ 0.
    """
    from jaxrel.graph import edge_lengths

    if not force_rms > 0:
        raise ValueError(f"the training forces' RMS is {force_rms} eV/Å; the repulsive prior needs forces "
                         "(it is fitted for force matching)")
    lengths = np.asarray(jax.vmap(lambda g: edge_lengths(g)[1])(graph), np.float64)
    mask = np.asarray(graph.edge_mask)
    species = np.asarray(graph.species)
    lookup = {z: k for k, z in enumerate(species_list)}
    frames = np.arange(len(lengths))[:, None]
    a = np.vectorize(lookup.get)(species[frames, np.asarray(graph.receivers)][mask])
    b = np.vectorize(lookup.get)(species[frames, np.asarray(graph.senders)][mask])
    r = lengths[mask]
    if r.size == 0:
        raise ValueError("the training frames have no pair within the cutoff; the repulsive prior has "
                         "nothing to fit (raise --cutoff or train without --prior)")
    n = len(species_list)
    sigma = np.full((n, n), np.inf)
    np.minimum.at(sigma, (a, b), r)
    sigma = np.minimum(sigma, sigma.T)
    sigma[~np.isfinite(sigma)] = sigma[np.isfinite(sigma)].min()
    return sigma, force_rms * sigma / EXPONENT
