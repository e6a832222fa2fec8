"""Tests of the noble-gas ground-truth generator (jaxrel.data.noble_gas), in float64."""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrel.data import noble_gas as ng

AR, KR = 18, 36
KEYS = {"species", "coords", "energies", "forces", "cell", "local_energies", "pair_frame",
        "pair_atoms", "pair_distance", "pair_energy", "triplet_frame", "triplet_atoms",
        "triplet_energy", "cutoff", "temperature_K", "three_body", "seed"}
# Short runs of a small box with a short cutoff: the exactness properties tested hold for
# any frame and cutoff; the liquid-state test uses the default cutoff.
SHORT = dict(n_atoms=32, cutoff=5.5, n_frames=4, equilibration_steps=100,
             steps_between_frames=10)


@pytest.fixture(scope="module")
def argon():
    return ng.generate_noble_gas("Ar", seed=0, **SHORT)


def per_frame(data, key):
    frame = data[key.replace("energy", "frame")]
    return np.bincount(frame, data[key], minlength=len(data["energies"]))


def lj(r, epsilon, sigma):
    return 4.0 * epsilon * ((sigma / r) ** 12 - (sigma / r) ** 6)


def switch(r, cutoff):
    x = np.clip((r - ng.SWITCH_ONSET * cutoff) / ((1.0 - ng.SWITCH_ONSET) * cutoff), 0.0, 1.0)
    return 1.0 - 10.0 * x**3 + 15.0 * x**4 - 6.0 * x**5


def test_output_has_exactly_the_documented_keys_shapes_and_dtypes(argon):
    assert set(argon) == KEYS
    f, n = 4, 32
    assert argon["species"].shape == (n,) and argon["species"].dtype == np.int32
    assert argon["coords"].shape == (f, n, 3) and argon["coords"].dtype == np.float64
    assert argon["forces"].shape == (f, n, 3) and argon["forces"].dtype == np.float64
    assert argon["energies"].shape == (f,) and argon["local_energies"].shape == (f, n)
    assert argon["pair_atoms"].dtype == np.int32 and argon["triplet_atoms"].dtype == np.int32
    side = argon["cell"][0, 0]
    np.testing.assert_array_equal(argon["cell"], side * np.eye(3))
    assert np.all((argon["coords"] >= 0) & (argon["coords"] <= side))
    assert argon["three_body"].shape == () and bool(argon["three_body"])
    assert float(argon["temperature_K"]) == pytest.approx(94.4)
    assert float(argon["cutoff"]) == 5.5 and int(argon["seed"]) == 0


def test_generation_leaves_global_x64_setting_unchanged():
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", False)
    try:
        ng.generate_noble_gas("Ar", n_atoms=32, n_frames=1, cutoff=5.5, equilibration_steps=5,
                           steps_between_frames=5)
        assert not jax.config.jax_enable_x64
    finally:
        jax.config.update("jax_enable_x64", before)


def test_pairs_and_triplets_are_the_listed_neighbours_within_the_cutoff(argon):
    cutoff, side = float(argon["cutoff"]), argon["cell"][0, 0]
    i, j = argon["pair_atoms"].T
    assert np.all(i < j)
    t = argon["triplet_atoms"]
    assert len(t) > 0 and np.all((t[:, 0] < t[:, 1]) & (t[:, 1] < t[:, 2]))
    x = argon["coords"][0]
    d = x[None] - x[:, None]
    r = np.linalg.norm(d - side * np.round(d / side), axis=-1)
    expected = {(a, b) for a, b in zip(*np.nonzero(np.triu(r < cutoff, k=1)))}
    first = argon["pair_frame"] == 0
    assert {tuple(p) for p in argon["pair_atoms"][first]} == expected
    np.testing.assert_allclose(argon["pair_distance"][first], r[i[first], j[first]])
    t0 = t[argon["triplet_frame"] == 0]
    assert np.all(r[t0[:, 0], t0[:, 1]] < cutoff) and np.all(r[t0[:, 1], t0[:, 2]] < cutoff)
    assert np.all(r[t0[:, 0], t0[:, 2]] < cutoff)


def test_pair_plus_triplet_energies_equal_total_energy_per_frame(argon):
    e2, e3 = per_frame(argon, "pair_energy"), per_frame(argon, "triplet_energy")
    np.testing.assert_allclose(e2 + e3, argon["energies"], rtol=1e-12, atol=1e-12)
    assert np.all(e3 > 0.01 * np.abs(argon["energies"]))


def test_local_energies_sum_to_total_energy(argon):
    np.testing.assert_allclose(argon["local_energies"].sum(axis=1), argon["energies"],
                               rtol=1e-12, atol=1e-12)
    # Atom 0's local energy from its own pairs and triplets.
    first = argon["pair_frame"] == 0
    own = np.any(argon["pair_atoms"][first] == 0, axis=1)
    first3 = argon["triplet_frame"] == 0
    own3 = np.any(argon["triplet_atoms"][first3] == 0, axis=1)
    expected = 0.5 * argon["pair_energy"][first][own].sum() \
        + argon["triplet_energy"][first3][own3].sum() / 3.0
    assert argon["local_energies"][0, 0] == pytest.approx(expected, rel=1e-12)


def test_forces_are_minus_the_finite_difference_gradient_and_sum_to_zero(argon):
    x, z, cell, cutoff = argon["coords"][1], argon["species"], argon["cell"], argon["cutoff"]
    frame = ng.decompose(x, z, cell, cutoff)
    np.testing.assert_allclose(frame["forces"], argon["forces"][1], atol=1e-12)
    assert frame["energy"] == pytest.approx(argon["energies"][1], rel=1e-12)
    np.testing.assert_allclose(argon["forces"].sum(axis=1), 0.0, atol=1e-12)
    h = 1e-4
    rng = np.random.default_rng(1)
    for atom, axis in zip(rng.choice(32, 4, replace=False), rng.integers(0, 3, 4)):
        step = np.zeros_like(x)
        step[atom, axis] = h
        e_plus = ng.decompose(x + step, z, cell, cutoff)["energy"]
        e_minus = ng.decompose(x - step, z, cell, cutoff)["energy"]
        assert -(e_plus - e_minus) / (2 * h) == pytest.approx(frame["forces"][atom, axis],
                                                              abs=1e-7)


def test_pair_energy_is_plain_lennard_jones_below_the_switching_onset():
    cutoff = 8.5
    r = np.linspace(3.0, ng.SWITCH_ONSET * cutoff, 50)
    ar, kr = ng.NOBLE_GASES["Ar"], ng.NOBLE_GASES["Kr"]
    mixed_eps = np.sqrt(ar["epsilon_eV"] * kr["epsilon_eV"])
    mixed_sigma = 0.5 * (ar["sigma_A"] + kr["sigma_A"])
    with jax.enable_x64(True):
        for zi, zj, eps, sigma in ((AR, AR, ar["epsilon_eV"], ar["sigma_A"]),
                                   (KR, KR, kr["epsilon_eV"], kr["sigma_A"]),
                                   (AR, KR, mixed_eps, mixed_sigma)):
            np.testing.assert_allclose(ng.pair_energy(r, zi, zj, cutoff), lj(r, eps, sigma),
                                       rtol=1e-13)
        assert ar["epsilon_eV"] == pytest.approx(119.8 * 8.617333262e-5)
        # Minimum of the Ar–Ar well: −ε at 2^(1/6) σ.
        r_min = 2 ** (1 / 6) * ar["sigma_A"]
        assert float(ng.pair_energy(r_min, AR, AR, cutoff)) == pytest.approx(-ar["epsilon_eV"])


def test_pair_energy_and_its_derivative_vanish_at_and_beyond_the_cutoff():
    cutoff = 7.0
    with jax.enable_x64(True):
        r = jnp.array([cutoff, cutoff + 1e-9, cutoff + 0.5, 20.0])
        assert np.all(np.asarray(ng.pair_energy(r, AR, KR, cutoff)) == 0.0)
        dphi = jax.vmap(jax.grad(ng.pair_energy), in_axes=(0, None, None, None))
        assert np.all(np.asarray(dphi(r, AR, KR, cutoff)) == 0.0)
        # Smooth approach: energy ~ δ³ and force ~ δ² just inside the cutoff.
        delta = 1e-3
        assert abs(float(ng.pair_energy(cutoff - delta, AR, AR, cutoff))) < 1e-9
        assert abs(float(jax.grad(ng.pair_energy)(cutoff - delta, AR, AR, cutoff))) < 1e-6
        # The switch is active: between onset and cutoff the energy is not plain LJ.
        ar = ng.NOBLE_GASES["Ar"]
        r_mid = 0.9 * cutoff
        np.testing.assert_allclose(ng.pair_energy(r_mid, AR, AR, cutoff),
                                   lj(r_mid, ar["epsilon_eV"], ar["sigma_A"]) * 0.5)


def test_equilateral_and_linear_atm_triplets_match_hand_computed_values():
    nu = ng.NOBLE_GASES["Ar"]["c9_eVA9"]
    nu_kr = ng.NOBLE_GASES["Kr"]["c9_eVA9"]
    assert nu == pytest.approx(517.0 * 27.211386245988 * 0.529177210903**9)
    assert 45.0 < nu < 47.0 and 135.0 < nu_kr < 145.0
    cutoff = 8.5
    with jax.enable_x64(True):
        r = 4.0
        assert float(ng.triplet_energy(r, r, r, AR, AR, AR, cutoff)) \
            == pytest.approx(nu * (1 + 3 / 8) / r**9, rel=1e-13)
        mixed = (nu * nu * nu_kr) ** (1 / 3)
        assert float(ng.triplet_energy(r, r, r, AR, KR, AR, cutoff)) \
            == pytest.approx(mixed * (1 + 3 / 8) / r**9, rel=1e-13)
        r = 7.5  # inside the switching region
        assert float(ng.triplet_energy(r, r, r, AR, AR, AR, cutoff)) \
            == pytest.approx(nu * (1 + 3 / 8) / r**9 * switch(r, cutoff) ** 3, rel=1e-12)
        # Collinear, atom i in the middle: γ_i = 180°, γ_j = γ_k = 0 → 1 + 3·(−1) = −2.
        a = 3.0
        assert float(ng.triplet_energy(a, a, 2 * a, AR, AR, AR, cutoff)) \
            == pytest.approx(-2 * nu / (a * a * 2 * a) ** 3, rel=1e-12)
        assert float(ng.triplet_energy(4.0, 4.0, cutoff, AR, AR, AR, cutoff)) == 0.0


def test_three_body_false_gives_zero_triplet_energies(argon):
    x, z, cell, cutoff = argon["coords"][0], argon["species"], argon["cell"], argon["cutoff"]
    full = ng.decompose(x, z, cell, cutoff)
    pairs_only = ng.decompose(x, z, cell, cutoff, three_body=False)
    assert len(pairs_only["triplet_energy"]) == len(full["triplet_energy"]) > 0
    assert np.all(pairs_only["triplet_energy"] == 0.0)
    assert pairs_only["energy"] == pytest.approx(pairs_only["pair_energy"].sum(), rel=1e-12)
    assert pairs_only["energy"] == pytest.approx(full["energy"] - full["triplet_energy"].sum(),
                                                 rel=1e-12)
    assert np.abs(pairs_only["forces"] - full["forces"]).max() > 1e-4


def test_triplet_that_only_closes_around_the_periodic_box_is_not_counted():
    # Three atoms 5 Å apart on a line in a 15 Å box: every minimum-image distance is
    # 5 Å < cutoff, but no images of them form a triangle with all sides < cutoff.
    side, cutoff = 15.0, 7.4
    x = np.array([[0.0, 1.0, 1.0], [5.0, 1.0, 1.0], [10.0, 1.0, 1.0]])
    frame = ng.decompose(x, np.array([AR, AR, KR]), side * np.eye(3), cutoff)
    assert len(frame["pair_energy"]) == 3 and len(frame["triplet_energy"]) == 0
    assert frame["energy"] == pytest.approx(frame["pair_energy"].sum(), rel=1e-13)


def test_same_seed_gives_identical_arrays_and_another_seed_differs(argon):
    again = ng.generate_noble_gas("Ar", seed=0, **SHORT)
    for key in KEYS:
        np.testing.assert_array_equal(again[key], argon[key], err_msg=key)
    other = ng.generate_noble_gas("Ar", seed=1, **SHORT)
    assert not np.allclose(other["coords"], argon["coords"])
    assert not np.allclose(other["energies"], argon["energies"])


def test_sampled_argon_is_a_liquid_at_the_target_temperature(argon):
    traj = ng.sample_noble_gas("Ar", seed=2, n_atoms=64, n_frames=15, equilibration_steps=200,
                               steps_between_frames=10)
    assert traj.temperature_K == pytest.approx(94.4)
    assert traj.cutoff == pytest.approx(ng.DEFAULT_CUTOFF_SIGMA * 3.405)
    assert abs(traj.kinetic_temperature_K.mean() - 94.4) < 0.2 * 94.4
    # Atoms diffuse (mean squared displacement over 1.4 ps well above a crystal's ~0.1 Å²).
    side = traj.cell[0, 0]
    steps = np.diff(traj.positions, axis=0)
    steps -= side * np.round(steps / side)
    msd = np.mean(np.sum(steps.sum(axis=0) ** 2, axis=-1))
    assert msd > 1.0
    sigma = ng.NOBLE_GASES["Ar"]["sigma_A"]
    assert argon["pair_distance"].min() > 0.8 * sigma


def test_mixed_species_frame_decomposes_exactly(argon):
    x, cell, cutoff = argon["coords"][0], argon["cell"], argon["cutoff"]
    z = np.where(np.arange(32) % 2 == 0, AR, KR).astype(np.int32)
    frame = ng.decompose(x, z, cell, cutoff)
    mixed = np.ptp(z[frame["triplet_atoms"]], axis=1) > 0
    assert mixed.sum() > 0
    assert frame["energy"] == pytest.approx(
        frame["pair_energy"].sum() + frame["triplet_energy"].sum(), rel=1e-12)
    assert frame["local_energies"].sum() == pytest.approx(frame["energy"], rel=1e-12)
    with jax.enable_x64(True):
        sides, t = frame["triplet_sides"][mixed], frame["triplet_atoms"][mixed]
        np.testing.assert_allclose(
            frame["triplet_energy"][mixed],
            ng.triplet_energy(*sides.T, z[t[:, 0]], z[t[:, 1]], z[t[:, 2]], cutoff),
            rtol=1e-12, atol=1e-15)


def test_argon_krypton_mixture_without_three_body_is_equimolar_and_pairwise():
    data = ng.generate_noble_gas("ArKr", seed=3, n_atoms=32, cutoff=5.5, n_frames=2,
                                 equilibration_steps=20, steps_between_frames=5,
                                 three_body=False)
    assert set(data) == KEYS and not bool(data["three_body"])
    z = data["species"]
    assert np.sum(z == AR) == 16 and np.sum(z == KR) == 16
    assert len(data["triplet_energy"]) > 0 and np.all(data["triplet_energy"] == 0.0)
    np.testing.assert_allclose(per_frame(data, "pair_energy"), data["energies"], rtol=1e-12)
    np.testing.assert_allclose(data["local_energies"].sum(axis=1), data["energies"], rtol=1e-12)
    mixed = z[data["pair_atoms"][:, 0]] != z[data["pair_atoms"][:, 1]]
    ar, kr = ng.NOBLE_GASES["Ar"], ng.NOBLE_GASES["Kr"]
    r = data["pair_distance"][mixed]
    inner = r < ng.SWITCH_ONSET * data["cutoff"]
    assert inner.sum() > 0
    np.testing.assert_allclose(data["pair_energy"][mixed][inner],
                               lj(r[inner], np.sqrt(ar["epsilon_eV"] * kr["epsilon_eV"]),
                                  0.5 * (ar["sigma_A"] + kr["sigma_A"])), rtol=1e-12)


def test_box_narrower_than_twice_the_cutoff_raises():
    with pytest.raises(ValueError, match="twice the cutoff"):
        ng.generate_noble_gas("Ar", n_atoms=32)
    with pytest.raises(ValueError, match="twice the cutoff"):
        ng.generate_noble_gas("Ar", n_atoms=64, cutoff=8.5)
    with pytest.raises(ValueError, match="twice the cutoff"):
        ng.decompose(np.zeros((2, 3)) + [[0.0], [4.0]], np.array([AR, AR]), 10.0 * np.eye(3),
                     5.5)


def test_unknown_species_raise():
    with pytest.raises(ValueError, match="species must be one of"):
        ng.generate_noble_gas("Xe")
    with pytest.raises(ValueError, match="atom 1 has species 54"):
        ng.decompose(np.eye(3), np.array([AR, 54, KR]), 20.0 * np.eye(3), 5.0)


def test_save_writes_every_array_unchanged(argon, tmp_path):
    path = tmp_path / "argon.npz"
    ng.save_noble_gas(argon, path)
    with np.load(path) as saved:
        assert set(saved.files) == KEYS
        for key in KEYS:
            np.testing.assert_array_equal(saved[key], argon[key], err_msg=key)


@pytest.mark.parametrize("settings, message", [
    (dict(temperature=-5.0), "--temperature -5.0 K must be a positive number; leave it out for "
                             "the liquid state point"),
    (dict(temperature=0.0), "--temperature 0.0 K must be a positive number"),
    (dict(temperature=float("nan")), "--temperature nan K must be a positive number"),
    (dict(n_frames=0), "--frames 0 must be an integer ≥ 1"),
    (dict(n_atoms=-3), "--atoms -3 must be an integer ≥ 1"),
    (dict(n_atoms=64.5), "--atoms 64.5 must be an integer ≥ 1"),
    (dict(seed=-1), "--seed -1 must be an integer ≥ 0"),
    (dict(cutoff=-1.0), "--cutoff -1.0 Å must be a positive number"),
    (dict(cutoff=0.0), "--cutoff 0.0 Å must be a positive number"),
    (dict(dt_fs=0.0), "dt_fs 0.0 fs must be a positive number"),
    (dict(steps_between_frames=0), "steps_between_frames 0 must be an integer ≥ 1"),
    (dict(equilibration_steps=-1), "equilibration_steps -1 must be an integer ≥ 0")])
def test_settings_that_cannot_give_finite_data_are_refused_up_front(settings, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        ng.generate_noble_gas("Ar", **settings)


def test_sampled_trajectory_that_blew_up_is_refused(monkeypatch):
    def blowing_up_md(*setup):
        """Stand-in for ng._md whose dynamics send atom 3 to NaN (no compilation)."""
        neighbor = SimpleNamespace(did_buffer_overflow=False)

        def init(key, x, mass, neighbor, species):
            return SimpleNamespace(position=x, momentum=jnp.zeros_like(x), mass=mass[:, None])

        def advance(state, neighbor, species, n_steps):
            return SimpleNamespace(position=state.position.at[3, 0].set(jnp.nan),
                                   momentum=state.momentum, mass=state.mass), neighbor

        return SimpleNamespace(allocate=lambda x, **_: neighbor), init, advance

    monkeypatch.setattr(ng, "_md", blowing_up_md)
    with pytest.raises(FloatingPointError, match="the generated positions of frame 0 are not "
                                                 "finite .*; lower --temperature"):
        ng.sample_noble_gas("Ar", n_atoms=32, cutoff=5.5, n_frames=2, equilibration_steps=0)


def test_generated_labels_that_are_not_finite_are_refused(monkeypatch):
    x = np.zeros((2, 2, 3))
    x[:, 1, 0] = 4.0
    traj = ng.NobleGasTrajectory(positions=x, velocities=np.zeros_like(x),
                                 species=np.array([AR, AR], np.int32), cell=20.0 * np.eye(3),
                                 kinetic_temperature_K=np.zeros(2), temperature_K=94.4, cutoff=5.0)
    forces = np.zeros_like(x)
    forces[1, 0, 2] = np.nan
    monkeypatch.setattr(ng, "sample_noble_gas", lambda *args: traj)
    monkeypatch.setattr(ng, "_label", lambda *args: {"energies": np.zeros(2), "forces": forces,
                                                     "local_energies": np.zeros((2, 2))})
    with pytest.raises(FloatingPointError, match="the generated forces of frame 1 are not finite"):
        ng.generate_noble_gas("Ar", n_atoms=2, n_frames=2)


@pytest.mark.parametrize("atom, position, message", [
    (1, [4.0, np.nan, 1.0], "frame 0, atom 1 has a non-finite position"),
    (2, [1.0, 1.0, 1.0], "atoms 0 and 2 are 0 Å apart, closer than 0.1 Å")])
def test_decompose_refuses_non_finite_or_coincident_positions(atom, position, message):
    x = np.array([[1.0, 1.0, 1.0], [5.0, 1.0, 1.0], [1.0, 5.0, 1.0]])
    x[atom] = position
    with pytest.raises(ValueError, match=message):
        ng.decompose(x, np.array([AR, AR, KR]), 20.0 * np.eye(3), 5.0)
