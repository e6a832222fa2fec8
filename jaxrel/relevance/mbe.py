"""The model's own many-body expansion (MBE): a rule-free decomposition to hold GNN-LRP against.

The energy of every connected atom set S is evaluated on the set alone, E(S): the other
atoms removed. In free space the set is a cluster in vacuum. In a periodic frame the set
keeps the frame's cell, so its pairs keep their minimum-image vectors, the only ones a
model with a cutoff below half the cell height sees; whenever those vectors close into one
cluster (every set except rings that wind around the cell, which :func:`connected_sets`
can list in small cells) this is the set's minimum-image geometry as a cluster in vacuum,
and for the rare winding rings it is what the model sees of them in the frame (an exact
potential then has no spurious terms for them). The n-body terms follow by Möbius
inversion over subsets,

    ``ε(S) = Σ_{T ⊆ S} (−1)^{|S|−|T|} E(T)``,

so ε({i}) = E({i}) − e_{Z_i}, ε({i, j}) = E({i, j}) − E({i}) − E({j}), and so on (the
classic MBE of quantum chemistry; for machine-learned potentials Chong et al. 2025,
arXiv:2509.14146, "body-order paradox"). Sets that are not connected within the cutoff
have ε = 0 exactly for a local model, so only connected sets are evaluated. The fixed
species shifts e_Z carry no interaction and are accounted apart, as in GNN-LRP
explanations, so Σ_S ε(S) over every order is E − Σ_i e_{Z_i}, and the truncation
residual ``E − Σ_i e_{Z_i} − Σ_{|S| ≤ max_order} ε(S)`` is what the orders above ``max_order``
carry.

Because each term is a function of positions, its gradient splits forces by body order:
F_i = Σ_n F_i⁽ⁿ⁾ + residual with ``F_i⁽ⁿ⁾ = −Σ_{|S| = n, S ∋ i} ∂ε(S)/∂x_i``, and the pair terms
give pairwise forces f_ij = −∂ε({i, j})/∂x_i = −f_ji (Newton's third law, by translation
invariance of each cluster energy).

For a potential that *is* a sum of pair and triplet terms (Lennard-Jones + Axilrod–Teller–
Muto, a body-ordered network) the MBE returns exactly those terms.

Results are :class:`~jaxrel.relevance.Explanation` objects with ``metadata["method"] ==
"mbe"``: the same :class:`~jaxrel.relevance.Table` schema as GNN-LRP terms (the
``relevance`` column holds ε in eV), so every analysis, plot and report reads both.

Cost: per frame, one vmapped, jit-compiled evaluation of all clusters of each size (sets
padded to power-of-two chunks so that compilations are reused), plus a vectorised
Möbius inversion on the host.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxrel.graph import Graph, edge_vectors
from jaxrel.relevance.explanation import Explanation, _graph_and_geometry, with_prior
from jaxrel.relevance.nbody import connected_sets, mobius_inversion
from jaxrel.relevance.table import Table
from jaxrel.relevance.walks import _require_single_frame
from jaxrel.version import __version__

MAX_ORDER = 4
"""Highest body order the MBE evaluates (the number of 5-atom sets grows too fast)."""

ClusterEnergy = Callable[[object, jax.Array, jax.Array, jax.Array | None], jax.Array]
"""``cluster_energy(params, positions, species, cell) -> ()``: the energy (eV) of k atoms
alone, positions (k, 3) Å, species (k,) int with 0 for unused slots (which must change
nothing), cell (3, 3) Å rows (periodic, minimum image) or None (vacuum). Jit- and
vmap-safe; ``params`` is any pytree (None for a fixed function)."""


def _check_order(max_order: int) -> None:
    if not 1 <= max_order <= MAX_ORDER:
        raise ValueError(f"max_order must be between 1 and {MAX_ORDER} for the many-body expansion, "
                         f"got {max_order}")


class FrameTerms(NamedTuple):
    """The MBE of one frame: ``orders`` {n: Table} (relevance column = ε, eV; forces column
    (m, n, 3) eV/Å when asked for) and ``seconds`` of wall time."""

    orders: dict[int, Table]
    seconds: float


def cluster_graph(positions: jax.Array, species: jax.Array, cutoff: float, cell: jax.Array | None = None) -> Graph:
    """The graph of a few atoms alone: every ordered pair closer than ``cutoff``.

    Jit-safe: all k(k − 1) directed pairs are listed and masked by (minimum-image)
    distance, so one compilation serves every set of k slots.

    Args:
        positions: (k, 3) Å.
        species: (k,) int atomic numbers; 0 marks an unused slot (masked).
        cutoff: Å.
        cell: (3, 3) Å rows (periodic) or None (vacuum).
    """
    k = species.shape[0]
    senders, receivers = np.nonzero(~np.eye(k, dtype=bool))
    mask = species > 0
    graph = Graph(positions=positions, species=species, senders=jnp.asarray(senders, jnp.int32),
                  receivers=jnp.asarray(receivers, jnp.int32), node_mask=mask,
                  edge_mask=jnp.asarray(mask[senders] & mask[receivers]), cell=cell)
    d = edge_vectors(graph)
    return graph._replace(edge_mask=graph.edge_mask & (jnp.sum(d * d, axis=-1) < cutoff**2))


@functools.lru_cache(maxsize=16)
def potential_cluster_energy(potential) -> ClusterEnergy:
    """The :data:`ClusterEnergy` of a :class:`~jaxrel.models.Potential` at its cutoff
    (one function per potential, so its compilations are reused)."""
    cutoff = potential.config.cutoff

    def energy(params, positions, species, cell):
        return potential.energy(params, cluster_graph(positions, species, cutoff, cell))

    return energy


@functools.partial(jax.jit, static_argnames=("cluster_energy", "with_forces"))
def _cluster_energies(cluster_energy, params, positions, species, cell, with_forces: bool):
    """Energies (c,) eV and, with forces, −∂E/∂x (c, k, 3) eV/Å of c sets of k atoms."""
    def one(x, z):
        return cluster_energy(params, x, z, cell)

    if with_forces:
        energy, grad = jax.vmap(jax.value_and_grad(one))(positions, species)
        return energy, -grad
    return jax.vmap(one)(positions, species), None


def _evaluate(cluster_energy, params, coordinates: np.ndarray, species: np.ndarray, cell, dtype,
              with_forces: bool, chunk_size: int):
    """Set energies (m,) and forces (m, k, 3) in chunks of a power-of-two size, float64."""
    m = len(coordinates)
    chunk = min(chunk_size, 1 << max(m - 1, 0).bit_length())
    energies, forces = np.zeros(m), np.zeros(coordinates.shape)
    for start in range(0, m, chunk):
        stop = min(start + chunk, m)
        rows = np.arange(start, start + chunk).clip(max=stop - 1)   # pad with the last real set
        e, f = _cluster_energies(cluster_energy, params, jnp.asarray(coordinates[rows], dtype),
                                 jnp.asarray(species[rows]), cell, with_forces)
        energies[start:stop] = np.asarray(e, np.float64)[:stop - start]
        if with_forces:
            forces[start:stop] = np.asarray(f, np.float64)[:stop - start]
    return energies, forces if with_forces else None


def frame_expansion(cluster_energy: ClusterEnergy, params, graph: Graph, max_order: int = 3, *,
                    forces: bool = False, chunk_size: int = 4096, frame: int = 0) -> FrameTerms:
    """The many-body expansion of one frame up to ``max_order`` (module docstring).

    Args:
        cluster_energy: energy of a set of atoms alone (:data:`ClusterEnergy`); it must not
            include per-species constants that should stay out of the 1-body terms.
        params: its parameters (any pytree, passed through).
        graph: one frame; its edges define which sets are connected (the cutoff graph),
            its positions and cell the sets' geometry; positions are cast to their dtype.
        max_order: highest body order, 1 ≤ max_order ≤ :data:`MAX_ORDER`.
        forces: also compute the per-term forces (the tables' ``forces`` column).
        chunk_size: clusters per compiled call (bounds memory).
        frame: the frame number written into the tables.

    Returns:
        :class:`FrameTerms`.
    Raises:
        ValueError: max_order outside 1..MAX_ORDER, or a batched graph.
    """
    _require_single_frame(graph)
    _check_order(max_order)
    start = time.perf_counter()
    positions = np.asarray(graph.positions, np.float64)
    species = np.asarray(graph.species)
    cell = None if graph.cell is None else np.asarray(graph.cell, np.float64)
    sets = connected_sets(graph, max_order)
    values, slot_forces = {}, {}
    for n, atoms in sets.items():
        values[n], slot_forces[n] = _evaluate(cluster_energy, params, positions[atoms], species[atoms], graph.cell,
                                              graph.positions.dtype, forces, chunk_size)
    terms = mobius_inversion(sets, values, graph.n_atoms)
    term_forces = mobius_inversion(sets, slot_forces, graph.n_atoms) if forces else {}
    orders = {n: Table.from_terms(atoms, terms[n], positions, species, cell, frame, term_forces.get(n))
              for n, atoms in sets.items()}
    return FrameTerms(orders, time.perf_counter() - start)


@functools.partial(jax.jit, static_argnames="potential")
def _atomwise_energy_and_forces(potential, params, graph: Graph):
    """Atomwise energies (F, N) eV and forces (F, N, 3) eV/Å of a batched graph."""
    def energy(positions):
        atomwise = potential.atomwise_energy(params, graph._replace(positions=positions))
        return atomwise.sum(), atomwise

    grad, atomwise = jax.grad(energy, has_aux=True)(graph.positions)
    return atomwise, -grad


def many_body_expansion(potential, params, frames, *, max_order: int = 3, forces: bool = False,
                        chunk_size: int = 4096, frame_index=None, model_path=None, data_path=None,
                        progress: bool = False) -> Explanation:
    """The model's many-body expansion of frames, as an :class:`Explanation` (method "mbe").

    For each frame and each connected set S of up to ``max_order`` atoms: the model's
    energy of S alone (a cluster in vacuum), then ε(S) by Möbius inversion (module
    docstring; Chong et al. 2025, arXiv:2509.14146).

    Accounting per frame (the same fields as a GNN-LRP explanation): ``energy`` E (the
    model on the whole frame), ``species_shift`` Σ e_Z, ``sum_relevance`` E − Σ e_Z (what
    the full expansion sums to, so the conservation error is 0), ``higher_order_residual``
    the truncation residual E − Σ e_Z − Σ listed ε.

    Args:
        potential, params: the model (e.g. from :func:`jaxrel.checkpoint.load_checkpoint`).
        frames: a :class:`jaxrel.data.Frames` or a :class:`~jaxrel.graph.Graph` of one or
            many frames of one system (as :func:`jaxrel.relevance.explain`).
        max_order: highest body order, 1 ≤ max_order ≤ :data:`MAX_ORDER`.
        forces: also split forces by body order: per-term forces in the tables, the model's
            forces in ``Explanation.forces`` (see :meth:`Explanation.body_order_forces`).
        chunk_size: clusters per compiled call (bounds memory).
        frame_index: (F,) frame numbers recorded in the tables (default 0..F−1).
        model_path, data_path: recorded in the metadata.
        progress: a progress bar over frames.

    Returns:
        :class:`Explanation` with ``metadata["method"] == "mbe"`` and ``rule`` "mbe".
    Raises:
        ValueError: max_order outside 1..MAX_ORDER, species the model was not trained on,
            bad positions or cells, frames with different atoms, or a ``frame_index`` of the
            wrong length.
    """
    _check_order(max_order)
    graph, positions, species, cell = _graph_and_geometry(potential, frames)
    n_frames = graph.positions.shape[0]
    index = np.arange(n_frames) if frame_index is None else np.asarray(frame_index, np.int64).reshape(-1)
    if len(index) != n_frames:
        raise ValueError(f"frame_index has {len(index)} entries for {n_frames} frames: give one number per frame")
    energy_fn, net_params = potential_cluster_energy(potential), potential.without_shifts(params)
    results = [frame_expansion(energy_fn, net_params, graph.frame(k), max_order, forces=forces,
                               chunk_size=chunk_size, frame=int(index[k]))
               for k in tqdm(range(n_frames), desc="many-body expansion", unit="frame", disable=not progress)]
    atomwise, model_forces = (np.asarray(a, np.float64)[:, :len(species)]
                              for a in _atomwise_energy_and_forces(potential, params, graph))
    shift_total = potential.shift_total(params, species)
    energy = atomwise.sum(axis=1)
    tables = with_prior(potential, params, {n: Table.concatenate([r.orders[n] for r in results])
                                            for n in range(1, max_order + 1)}, add=False)
    listed = np.stack([tables[n].frame_sums(index) for n in tables]).sum(axis=0)
    metadata = {"method": "mbe", "model": None if model_path is None else str(model_path),
                "data": None if data_path is None else str(data_path), "rule": "mbe", "epsilon": None,
                "gamma": None, "model_config": potential.config.to_dict(), "jaxrel_version": __version__}
    return Explanation(
        tables=tables, frames=index, energy=energy, species_shift=np.full(n_frames, shift_total),
        sum_relevance=energy - shift_total, higher_order_residual=energy - shift_total - listed,
        seconds=np.array([r.seconds for r in results]), positions=positions, species=species, cell=cell,
        atomwise_energy=atomwise, metadata=metadata, forces=model_forces if forces else None)
