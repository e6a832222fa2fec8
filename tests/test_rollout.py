"""The pure NVE rollout (jaxrel.md.rollout): the same trajectory as simulate, exact gradients
through the integrator (central finite differences), and an overflow flag instead of a silent
wrong trajectory. float64 (conftest enables it); one H/O SchNet and one O–H–H molecule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import small_potential
from jaxrel.md import MDConfig, rollout, simulate

WATER = np.array([[0.0, 0, 0], [0.97, 0, 0], [-0.25, 0.93, 0]])
SPECIES = np.array([8, 1, 1])
VELOCITIES = 0.01 * np.random.default_rng(0).normal(size=(3, 3))     # Å/fs, a hot start


@pytest.fixture(scope="module")
def model():
    return small_potential()


def test_rollout_equals_an_nve_simulation_with_the_same_start(model):
    potential, params = model
    run = jax.jit(rollout(potential, SPECIES, WATER, n_steps=40, dt_fs=0.5, save_every=10))
    r = run(params, jnp.asarray(WATER), jnp.asarray(VELOCITIES))
    traj = simulate(potential, params, WATER, SPECIES, config=MDConfig("nve", dt_fs=0.5, n_steps=40, log_every=10),
                    velocities=VELOCITIES, progress=False)
    assert r.positions.shape == (5, 3, 3) and not bool(r.overflow)
    np.testing.assert_allclose(r.positions, traj.positions[0], rtol=0, atol=1e-10)
    np.testing.assert_allclose(r.velocities, traj.velocities[0], rtol=0, atol=1e-10)
    np.testing.assert_allclose(r.potential_energy_eV, traj.potential_energy_eV[0], rtol=0, atol=1e-10)
    np.testing.assert_allclose(r.kinetic_energy_eV, traj.kinetic_energy_eV[0], rtol=0, atol=1e-10)


def test_gradient_of_the_mean_potential_energy_equals_central_finite_differences(model):
    potential, params = model
    run = rollout(potential, SPECIES, WATER, n_steps=30, dt_fs=0.5, save_every=5)

    def loss(p, v):
        return run(p, jnp.asarray(WATER), v).potential_energy_eV.mean()

    v = jnp.asarray(VELOCITIES)
    grad_params, grad_v = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, v)
    rng = np.random.default_rng(1)
    direction = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=np.shape(x)), x.dtype)
                             if jnp.issubdtype(x.dtype, jnp.floating) else jnp.zeros_like(x), params)
    eps = 1e-5
    shifted = [jax.tree.map(lambda p, d: p + s * eps * d, params, direction) for s in (1, -1)]
    finite = (loss(shifted[0], v) - loss(shifted[1], v)) / (2 * eps)
    analytic = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grad_params), jax.tree.leaves(direction)))
    assert float(analytic) == pytest.approx(float(finite), rel=1e-6)
    dv = jnp.asarray(rng.normal(size=(3, 3))) * 1e-3
    finite_v = (loss(params, v + eps * dv) - loss(params, v - eps * dv)) / (2 * eps)
    assert float(jnp.vdot(grad_v, dv)) == pytest.approx(float(finite_v), rel=1e-6)


def test_a_neighbour_list_too_small_for_the_run_sets_overflow(model):
    potential, params = model
    stretched = WATER * 3.0                 # O–H 2.9 Å (within the 3 Å cutoff), H–H beyond it: 4 directed pairs
    run = rollout(potential, SPECIES, stretched, n_steps=2, capacity_multiplier=1.0)
    assert bool(run(params, jnp.asarray(WATER), jnp.asarray(VELOCITIES)).overflow)    # water has 6
    assert not bool(run(params, jnp.asarray(stretched), jnp.zeros((3, 3))).overflow)


def test_bad_settings_are_refused(model):
    potential, _ = model
    with pytest.raises(ValueError, match="does not divide"):
        rollout(potential, SPECIES, WATER, n_steps=10, save_every=3)
    with pytest.raises(ValueError, match="one structure"):
        rollout(potential, SPECIES, np.stack([WATER, WATER]), n_steps=10)
    with pytest.raises(ValueError, match="n_steps is 0"):
        rollout(potential, SPECIES, WATER, n_steps=0)
