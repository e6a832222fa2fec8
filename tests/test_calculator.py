"""The ASE calculator returns the model's energies, forces and a consistent stress."""

import ase
import numpy as np
import pytest

from helpers import argon_potential, liquid
from jaxrel.calculator import JaxrelCalculator
from jaxrel.checkpoint import save_checkpoint
from jaxrel.graph import build_graphs


@pytest.mark.parametrize("model", ["schnet", "painn", "nequip"])
def test_calculator_gives_the_models_energy_forces_and_atomwise_energies(model):
    pot, params = argon_potential(model)
    atoms = liquid()
    atoms.calc = JaxrelCalculator(pot, params)
    graph = build_graphs(atoms.positions, atoms.numbers, 4.0, cell=atoms.cell.array).frame(0)
    energy, forces = pot.energy_and_forces(params, graph)
    assert atoms.get_potential_energy() == pytest.approx(float(energy), rel=1e-12)
    np.testing.assert_allclose(atoms.get_forces(), forces, atol=1e-12)
    np.testing.assert_allclose(atoms.get_potential_energies().sum(), float(energy), rtol=1e-12)


@pytest.mark.parametrize("model", ["schnet", "painn"])
def test_stress_equals_the_numerical_strain_derivative(model):
    pot, params = argon_potential(model)
    atoms = liquid(seed=1)
    calc = JaxrelCalculator(pot, params)
    atoms.calc = calc
    analytic = atoms.get_stress()
    numeric = calc.calculate_numerical_stress(atoms, d=1e-5)
    np.testing.assert_allclose(analytic, numeric, atol=1e-9, rtol=1e-5)
    assert np.abs(analytic).max() > 1e-6


def test_free_space_molecule_has_no_stress_and_bad_input_is_rejected(tmp_path):
    pot, params = argon_potential("schnet")
    save_checkpoint(tmp_path / "m", pot, params)
    calc = JaxrelCalculator.from_checkpoint(tmp_path / "m")
    dimer = ase.Atoms("Ar2", positions=[[0, 0, 0], [3.7, 0, 0]])
    dimer.calc = calc
    assert np.isfinite(dimer.get_potential_energy())
    assert "stress" not in calc.results
    xenon = ase.Atoms("ArXe", positions=[[0, 0, 0], [3.7, 0, 0]], calculator=calc)
    with pytest.raises(ValueError, match="atom 1 has species 54"):
        xenon.get_potential_energy()
    slab = liquid()
    slab.pbc = [True, True, False]
    slab.calc = calc
    with pytest.raises(ValueError, match="fully periodic"):
        slab.get_potential_energy()
