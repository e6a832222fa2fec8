"""An ASE calculator for any jaxrel potential (energy, forces, stress where periodic).

Stress is the strain derivative σ = (1/V) ∂E/∂ε of the energy under a homogeneous
deformation of positions and cell, x → (I + ε) x, at fixed neighbour list (Nielsen &
Martin, Phys. Rev. B 32, 3780, 1985), in eV/Å³ as ASE expects (Voigt order xx, yy, zz,
yz, xz, xy).
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from jaxrel.geometry import check_cell
from jaxrel.graph import cell_key, check_positions, graph_from_neighbors, neighbor_list_fn
from jaxrel.models import Potential


class JaxrelCalculator(Calculator):
    """ASE calculator wrapping a :class:`~jaxrel.models.Potential` and its params.

    Args:
        potential, params: the model (e.g. from :func:`jaxrel.checkpoint.load_checkpoint`).

    Raises (at calculation):
        ValueError: partly periodic cells, unknown species, non-finite positions or atoms
            closer than 0.1 Å, or a degenerate cell or one narrower than twice the cutoff.
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]

    def __init__(self, potential: Potential, params, **kwargs):
        potential.check_energy_target("an ASE calculator")
        super().__init__(**kwargs)
        self.potential, self.params = potential, params
        self._energy_and_forces = jax.jit(potential.energy_and_forces)
        self._atomwise = jax.jit(potential.atomwise_energy)
        self._strain_derivative = jax.jit(jax.grad(self._strained_energy, argnums=1))
        self._update = jax.jit(lambda neighbors, positions: neighbors.update(positions))
        self._system = self._neighbor_fn = self._neighbors = None

    @classmethod
    def from_checkpoint(cls, directory: str | Path, **kwargs) -> "JaxrelCalculator":
        """A calculator for a model folder written by ``jaxrel train`` (OUT/model)."""
        from jaxrel.checkpoint import load_checkpoint

        potential, params, _ = load_checkpoint(directory)
        return cls(potential, params, **kwargs)

    def _strained_energy(self, graph, strain):
        deformation = jnp.eye(3, dtype=strain.dtype) + strain
        return self.potential.energy(self.params, graph._replace(
            positions=graph.positions @ deformation.T, cell=graph.cell @ deformation.T))

    def _graph(self, positions: np.ndarray, numbers: np.ndarray, cell: np.ndarray | None):
        """The frame's graph from a JAX MD neighbour list kept between calls.

        The list is allocated for a new system (species or cell changed), updated by a
        jitted call otherwise, and reallocated when it overflows, so an MD step costs
        one list update and one model evaluation.
        """
        config = self.potential.config
        if cell is not None:
            check_cell(cell, config.cutoff, whose="the model's",
                       fix="replicate the cell (ase's Atoms.repeat)")
        check_positions(positions, numbers, min_distance=0.1, cell=cell)
        dtype = jnp.dtype(config.dtype)
        pos = jnp.asarray(positions, dtype)
        system = (tuple(numbers.tolist()), cell_key(cell))
        if system != self._system:
            _, self._neighbor_fn = neighbor_list_fn(config.cutoff, cell_key(cell), dtype=dtype.name)
            self._neighbors, self._system = self._neighbor_fn.allocate(pos), system
        neighbors = self._update(self._neighbors, pos)
        if bool(neighbors.did_buffer_overflow):
            neighbors = self._neighbor_fn.allocate(pos)
        self._neighbors = neighbors
        return graph_from_neighbors(pos, jnp.asarray(numbers, jnp.int32), neighbors.idx,
                                    None if cell is None else jnp.asarray(cell, dtype))

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        pbc = np.asarray(self.atoms.pbc)
        if pbc.any() and not pbc.all():
            raise ValueError(f"atoms have pbc={pbc.tolist()}; jaxrel handles free space or fully "
                             "periodic cells only")
        cell = np.asarray(self.atoms.cell.array) if pbc.all() else None
        self.potential.check_species(self.atoms.numbers)
        graph = self._graph(np.asarray(self.atoms.positions), np.asarray(self.atoms.numbers), cell)
        energy, forces = self._energy_and_forces(self.params, graph)
        self.results["energy"] = self.results["free_energy"] = float(energy)
        self.results["forces"] = np.asarray(forces, np.float64)
        if "energies" in properties:
            self.results["energies"] = np.asarray(self._atomwise(self.params, graph), np.float64)
        if cell is not None and "stress" in properties:
            derivative = np.asarray(self._strain_derivative(graph, jnp.zeros((3, 3), graph.positions.dtype)),
                                    np.float64)
            sigma = 0.5 * (derivative + derivative.T) / abs(np.linalg.det(cell))
            self.results["stress"] = sigma[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
