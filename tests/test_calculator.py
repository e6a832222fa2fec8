"""The ASE calculator returns the model's energies, forces and a consistent stress."""

import ase
import numpy as np
import pytest

from jaxrel.calculator import JaxrelCalculator
from jaxrel.graph import build_graphs
from jaxrel.models import ModelConfig, Potential
from jaxrel.train import save_checkpoint


def argon_potential(model):
    return Potential.create(ModelConfig(model, (18,), cutoff=4.0, n_features=8, n_interactions=2,
                                        n_rbf=6, dtype="float64"), {18: -0.1}, 1.0, seed=2)


def liquid(seed=0, n=8, side=8.5):
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(2)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n]
    return ase.Atoms(f"Ar{n}", positions=(grid + 0.5) * side / 2 + 0.3 * rng.normal(size=(n, 3)),
                     cell=np.diag([side, side * 1.05, side * 0.98]), pbc=True)


@pytest.mark.parametrize("model", ["schnet", "painn"])
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
