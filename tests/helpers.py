"""Shared test builders and physics assertions (plain functions; ``from helpers import ...``).

Builders: small potentials and systems used by several test files. Assertions in the
style of e3nn-jax's ``assert_equivariant``: :func:`assert_invariant` and
:func:`assert_conserves` take anything with the :class:`jaxrel.models.Potential`
methods ``energy``, ``atomwise_energy`` and ``energy_and_forces`` and raise
``AssertionError`` saying which property failed.
"""

from __future__ import annotations

import ase
import ase.io
import jax
import jax.numpy as jnp
import numpy as np
from ase.calculators.singlepoint import SinglePointCalculator

from jaxrel.graph import Graph
from jaxrel.models import ModelConfig, Potential

# builders


def morse_dimers(path, n_frames=40, seed=0):
    """An extxyz of noisy O–H–H triangles with a Morse-pair energy (eV) and exact forces."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n_frames):
        pos = np.array([[0.0, 0, 0], [0.97, 0, 0], [-0.25, 0.93, 0]]) + 0.08 * rng.normal(size=(3, 3))
        d = pos[:, None] - pos[None]
        r = np.linalg.norm(d, axis=-1) + np.eye(3)
        x = np.exp(-2.0 * (r - 1.0))
        pair = 0.5 * (x ** 2 - 2 * x) * (1 - np.eye(3))
        dpair = 0.5 * (-4.0 * x ** 2 + 4.0 * x) * (1 - np.eye(3))
        forces = -np.sum(dpair[..., None] * d / r[..., None], axis=1)
        atoms = ase.Atoms("OHH", positions=pos)
        atoms.calc = SinglePointCalculator(atoms, energy=float(pair.sum() / 2) - 14.0, forces=forces)
        frames.append(atoms)
    ase.io.write(path, frames, format="extxyz")
    return path


def small_potential(dtype="float64", model="schnet", n_features=8):
    """A one-interaction H/O potential (cutoff 3 Å) with shifts {1: −4, 8: −6} eV."""
    return Potential.create(ModelConfig(model, (1, 8), cutoff=3.0, n_features=n_features,
                                        n_interactions=1, n_rbf=8, dtype=dtype),
                            {1: -4.0, 8: -6.0}, energy_scale=0.5, seed=0)


def argon_potential(model):
    """A float64 two-interaction argon potential (cutoff 4 Å)."""
    return Potential.create(ModelConfig(model, (18,), cutoff=4.0, n_features=8, n_interactions=2,
                                        n_rbf=6, dtype="float64"), {18: -0.1}, 1.0, seed=2)


def liquid(seed=0, n=8, side=8.5):
    """``n`` ≤ 8 argon atoms near the sites of a 2×2×2 grid in a slightly orthorhombic periodic box."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(2)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n]
    return ase.Atoms(f"Ar{n}", positions=(grid + 0.5) * side / 2 + 0.3 * rng.normal(size=(n, 3)),
                     cell=np.diag([side, side * 1.05, side * 0.98]), pbc=True)


def random_rotation(seed):
    """A uniformly random proper rotation matrix (det +1)."""
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def masked_atomwise_energy(potential, params, h0, graph: Graph, rules, masks) -> jax.Array:
    """Atomwise energies (eV) of one frame from h⁽⁰⁾ with per-layer masks m_t ((T + 1, n_atoms);
    None = unmasked): h ← m_t ⊙ h + (1 − m_t) ⊙ stop_gradient(h) after the embedding (t = 0)
    and after each layer, composed from ``potential.layer_functions``."""
    layers, energy_readout = potential.layer_functions(params, graph, rules)

    def mask(h, t):
        if masks is None:
            return h
        m = masks[t]

        def one(x):
            w = m.reshape(m.shape + (1,) * (x.ndim - 1)).astype(x.dtype)
            return w * x + (1 - w) * jax.lax.stop_gradient(x)

        return jax.tree.map(one, h)

    h = mask(h0, 0)
    for t, layer in enumerate(layers, start=1):
        h = mask(layer(h), t)
    return energy_readout(h)


# physics assertions


def _frames(graph: Graph) -> list[Graph]:
    return [graph.frame(k) for k in range(graph.positions.shape[0])] if graph.is_batched else [graph]


def _close(name: str, got, expected, rtol: float, atol: float) -> None:
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    error = np.abs(got - expected)
    bound = atol + rtol * np.abs(expected)
    if not (error <= bound).all():
        k = int(np.argmax(error - bound))
        raise AssertionError(f"{name}: largest deviation {error.ravel()[k]:.3g} exceeds "
                             f"atol {atol:g} + rtol {rtol:g} × |{expected.ravel()[k]:.6g}|")


def permute_atoms(graph: Graph, perm: np.ndarray) -> Graph:
    """One frame with atom k of the result being atom ``perm[k]`` of ``graph`` (edges remapped)."""
    inverse = jnp.asarray(np.argsort(perm), graph.senders.dtype)
    return graph._replace(positions=graph.positions[perm], species=graph.species[perm],
                          node_mask=graph.node_mask[perm], senders=inverse[graph.senders],
                          receivers=inverse[graph.receivers])


def assert_invariant(potential, params, graph: Graph, *, rtol: float = 1e-12, atol: float = 1e-11,
                     seed: int = 0) -> None:
    """E and the atomwise energies E_i are invariant and the forces equivariant.

    Checks, per frame: under x ↦ R x + t (a random proper rotation R and translation t; the
    cell rows rotate with the frame for periodic graphs) E and every E_i are unchanged and
    F(Rx + t) = R F(x); under a random permutation of the real atoms, never the identity
    (positions, species and masks permuted, senders/receivers remapped; padding stays in
    place) E is unchanged and E_i, F_i follow their atoms.

    Raises:
        AssertionError: naming the property that failed and the size of the deviation.
    """
    for k, g in enumerate(_frames(graph)):
        rng = np.random.default_rng(seed + k)
        rot = random_rotation(seed + k)
        shift = rng.normal(scale=2.0, size=3)
        dtype = g.positions.dtype
        moved = g._replace(positions=(g.positions @ rot.T + shift).astype(dtype),
                           cell=None if g.cell is None else (g.cell @ rot.T).astype(dtype))
        e, f = potential.energy_and_forces(params, g)
        atomwise = potential.atomwise_energy(params, g)
        e_rot, f_rot = potential.energy_and_forces(params, moved)
        where = f"frame {k}: "
        _close(where + "energy changed under a rotation + translation", e_rot, e, rtol, atol)
        _close(where + "atomwise energies changed under a rotation + translation",
               potential.atomwise_energy(params, moved), atomwise, rtol, atol)
        _close(where + "forces do not rotate with the frame (F(Rx + t) ≠ R F(x))",
               f_rot, np.asarray(f) @ rot.T, rtol, atol)

        real = np.flatnonzero(np.asarray(g.node_mask))
        order = rng.permutation(len(real))
        if len(real) > 1 and (order == np.arange(len(real))).all():
            order = np.roll(order, 1)  # never the identity
        perm = np.arange(g.n_atoms)
        perm[real] = real[order]
        shuffled = permute_atoms(g, perm)
        e_perm, f_perm = potential.energy_and_forces(params, shuffled)
        _close(where + "energy changed under a permutation of the atoms", e_perm, e, rtol, atol)
        _close(where + "atomwise energies do not follow a permutation of the atoms",
               potential.atomwise_energy(params, shuffled), np.asarray(atomwise)[perm], rtol, atol)
        _close(where + "forces do not follow a permutation of the atoms", f_perm, np.asarray(f)[perm],
               rtol, atol)


def assert_conserves(potential, params, graph: Graph, *, eps: float = 1e-5, rtol: float = 1e-6,
                     atol: float = 1e-8, n_checks: int = 3, seed: int = 0, sum_atol: float | None = None) -> None:
    """Σ_i F_i = 0, and F = −∂E/∂x by central finite differences (step ``eps`` Å; ``rtol``,
    ``atol``) on ``n_checks`` distinct random coordinates of real atoms, per frame.

    Σ_i F_i must vanish to rounding: within ``sum_atol`` (default 1000 × the machine epsilon
    of the positions' dtype × max |F| × number of real atoms).

    Raises:
        AssertionError: naming the property that failed and the size of the deviation.
    """
    for k, g in enumerate(_frames(graph)):
        _, f = potential.energy_and_forces(params, g)
        f = np.asarray(f, np.float64)
        real = np.flatnonzero(np.asarray(g.node_mask))
        bound = sum_atol if sum_atol is not None else (
            1e3 * np.finfo(g.positions.dtype).eps * max(float(np.abs(f).max()), 1e-3) * len(real))
        _close(f"frame {k}: forces do not sum to zero (Σ_i F_i ≠ 0)", f.sum(0), np.zeros(3), 0.0, bound)
        rng = np.random.default_rng(seed + k)
        coordinates = rng.choice(3 * len(real), min(n_checks, 3 * len(real)), replace=False)
        for atom, axis in zip(real[coordinates // 3], coordinates % 3):
            step = jnp.zeros_like(g.positions).at[atom, axis].set(eps)
            plus, minus = (potential.energy(params, g._replace(positions=g.positions + s * step))
                           for s in (1, -1))
            fd = -(float(plus) - float(minus)) / (2 * eps)
            _close(f"frame {k}: force on atom {atom} along axis {axis} is not −∂E/∂x "
                   "(central finite difference)", f[atom, axis], fd, rtol, atol)


def assert_relevance_invariant(potential, params, graph: Graph, rules="gi", *, rtol: float = 1e-9,
                               atol: float = 1e-12, seed: int = 0) -> None:
    """Every walk's relevance (Schnake et al. 2022, arXiv:2006.03589) is invariant under a
    rotation + translation of the frame and follows its atoms under a permutation.

    ``atol`` is relative to the largest |R_W| of the frame. For one unbatched frame; ``rules``
    a rule set or its name.

    Raises:
        AssertionError: naming the transformation that changed the relevances.
    """
    from jaxrel.relevance import enumerate_walks, walk_relevance

    rng = np.random.default_rng(seed)
    walks = enumerate_walks(graph, potential.config.n_interactions)
    relevance = np.asarray(walk_relevance(potential, params, graph, walks, rules))
    atol = atol * max(float(np.abs(relevance).max()), 1e-30)
    rot, dtype = random_rotation(seed), graph.positions.dtype
    moved = graph._replace(positions=(graph.positions @ rot.T + rng.normal(scale=2.0, size=3)).astype(dtype),
                           cell=None if graph.cell is None else (graph.cell @ rot.T).astype(dtype))
    _close("walk relevances changed under a rotation + translation",
           walk_relevance(potential, params, moved, walks, rules), relevance, rtol, atol)
    real = np.flatnonzero(np.asarray(graph.node_mask))
    perm = np.arange(graph.n_atoms)
    perm[real] = real[np.roll(rng.permutation(len(real)), 1)]
    inverse = np.argsort(perm)
    shuffled = permute_atoms(graph, perm)
    _close("walk relevances do not follow a permutation of the atoms",
           walk_relevance(potential, params, shuffled, inverse[np.asarray(walks)], rules),
           relevance, rtol, atol)
