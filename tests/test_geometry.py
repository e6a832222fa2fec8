"""jaxrel.geometry: minimum image, cell heights, cell checks and partial RDFs."""

import itertools

import numpy as np
import pytest

from jaxrel.geometry import cell_heights, check_cell, cluster_coordinates, minimum_image, partial_rdf
from jaxrel.relevance import Table
from jaxrel.stability import rdf

TRICLINIC = np.array([[10.0, 0.0, 0.0], [3.0, 9.0, 0.0], [-2.0, 2.5, 11.0]])


def test_minimum_image_is_the_shortest_of_the_27_neighbouring_images():
    rng = np.random.default_rng(0)
    half = cell_heights(TRICLINIC).min() / 2
    x = rng.uniform(0.0, 1.0, size=(2, 4000, 3)) @ TRICLINIC
    d = x[1] - x[0]
    shifts = np.array(list(itertools.product((-1, 0, 1), repeat=3))) @ TRICLINIC
    images = d[:, None, :] + shifts[None, :, :]
    brute = images[np.arange(len(d)), np.argmin(np.linalg.norm(images, axis=-1), axis=1)]
    inside = np.linalg.norm(brute, axis=-1) < half
    assert inside.sum() > 1000 and (~inside).sum() > 100
    np.testing.assert_allclose(minimum_image(d, TRICLINIC)[inside], brute[inside], atol=1e-12)
    unwrapped = d + rng.integers(-3, 4, size=(len(d), 3)) @ TRICLINIC
    np.testing.assert_allclose(minimum_image(unwrapped, TRICLINIC)[inside], brute[inside], atol=1e-12)


def test_minimum_image_without_a_cell_returns_the_displacements_as_float64():
    d = np.arange(12, dtype=np.float32).reshape(2, 2, 3)
    out = minimum_image(d, None)
    assert out.dtype == np.float64 and np.array_equal(out, d)


def test_a_periodic_path_triplet_longer_than_half_the_cell_is_one_triangle():
    """i–j and j–k are 6 Å edges (cutoff 6.5 Å) in a 20 Å cube; i–k is 12 Å apart in space,
    so its own minimum image (8 Å, the other way round) is another triangle's side."""
    cell = 20.0 * np.eye(3)
    positions = np.array([[0.5, 1.0, 1.0], [6.5, 1.0, 1.0], [12.5, 1.0, 1.0]]) + 0.2
    coords = cluster_coordinates(positions, np.array([[0, 1, 2]]), cell)[0]
    np.testing.assert_allclose(coords[0], [-6.0, 0.0, 0.0], atol=1e-12)     # the centre is atom 1
    np.testing.assert_array_equal(coords[1], 0.0)
    assert np.linalg.norm(coords[2] - coords[0]) == pytest.approx(12.0)
    assert np.linalg.norm(minimum_image(positions[2] - positions[0], cell)) == pytest.approx(8.0)
    table = Table.from_terms(np.array([[0, 1, 2]]), np.zeros(1), positions, np.full(3, 18), cell)
    np.testing.assert_allclose(table.distances, [[6.0, 12.0, 6.0]])
    np.testing.assert_allclose(table.angles, [[0.0, 180.0, 0.0]], atol=1e-6)


def test_cluster_sides_from_the_centre_are_minimum_images_to_the_bit_and_free_space_is_unchanged():
    rng = np.random.default_rng(4)
    positions = rng.uniform(0.0, 1.0, (30, 3)) @ TRICLINIC
    atoms = np.array([[0, 1, 2], [3, 4, 5], [6, 7, 8]])
    coords = cluster_coordinates(positions, atoms, TRICLINIC)
    for row, c in zip(atoms, coords):
        centre = int(np.flatnonzero(np.all(c == 0.0, axis=1))[0])
        for k in range(3):
            np.testing.assert_array_equal(c[k], minimum_image(positions[row[k]] - positions[row[centre]], TRICLINIC))
    np.testing.assert_array_equal(cluster_coordinates(positions, atoms, None), positions[atoms])


def test_periodic_triplet_angles_sum_to_180_degrees():
    rng = np.random.default_rng(5)
    cell = 9.0 * np.eye(3)
    positions = rng.uniform(0.0, 9.0, (40, 3))
    atoms = np.array(list(itertools.combinations(range(12), 3)))
    d = np.linalg.norm(minimum_image(positions[:, None] - positions[None], cell), axis=-1)
    connected = np.array([sum(d[a, b] < 4.4 for a, b in itertools.combinations(r, 2)) >= 2 for r in atoms])
    table = Table.from_terms(atoms[connected], np.zeros(connected.sum()), positions, np.full(40, 18), cell)
    assert len(table) > 20
    np.testing.assert_allclose(table.angles.sum(axis=1), 180.0, atol=1e-8)


def test_cell_heights_of_cubic_and_triclinic_cells():
    np.testing.assert_allclose(cell_heights(7.5 * np.eye(3)), [7.5, 7.5, 7.5], rtol=1e-15)
    # h_k = V / |a_(k+1) × a_(k+2)| with V = 10 · 9 · 11 for this lower-triangular cell
    a, b, c = TRICLINIC
    volume = 990.0
    expected = [volume / np.linalg.norm(np.cross(b, c)), volume / np.linalg.norm(np.cross(c, a)),
                volume / np.linalg.norm(np.cross(a, b))]
    np.testing.assert_allclose(cell_heights(TRICLINIC), expected, rtol=1e-14)
    assert cell_heights(TRICLINIC)[2] == pytest.approx(11.0)  # c · ẑ, as a ⟂ ẑ and b ⟂ ẑ
    np.testing.assert_allclose(cell_heights(np.stack([TRICLINIC, 7.5 * np.eye(3)])),
                               [expected, [7.5] * 3], rtol=1e-14)


@pytest.mark.parametrize("cell, kwargs, message", [
    (np.eye(3) * 9.5, dict(cutoff=5.0), "the periodic cell is 9.5 Å wide, less than twice the 5.0 Å "
                                        "cutoff; use a smaller cutoff or replicate the cell"),
    (np.eye(3) * 9.5, dict(cutoff=5.0, whose="the model's", fix="replicate it"),
     "less than twice the model's 5.0 Å cutoff; replicate it"),
    (np.stack([np.eye(3) * 12.0, np.eye(3) * 9.5]), dict(cutoff=5.0, per_frame=True),
     "cell of frame 1 is 9.5 Å wide"),
    (np.array([[1.0, 0, 0], [0, 1, 0], [1, 1, 0]]) * 10, {}, "has volume 0 Å³"),
    (np.diag([10.0, np.nan, 10.0]), {}, "holds NaN or inf"),
    (np.eye(2), {}, "cell has shape (2, 2)"),
    (np.stack([np.eye(3)] * 2), {}, "cell has shape (2, 3, 3)"),
    (np.eye(3) * 10, dict(cutoff=0.0), "cutoff is 0.0 Å; it must be positive"),
    (np.eye(3) * 8, dict(r_max=4.5), "exceeds half the smallest cell width"),
])
def test_check_cell_rejects_bad_cells_with_one_sentence(cell, kwargs, message):
    with pytest.raises(ValueError) as err:
        check_cell(cell, **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_check_cell_accepts_cells_exactly_twice_the_cutoff_and_returns_float64():
    out = check_cell(np.eye(3, dtype=np.float32) * 10, 5.0, r_max=5.0)
    assert out.dtype == np.float64 and out.shape == (3, 3)


def uniform_gas(box, n_atoms, n_frames, seed=0):
    return np.random.default_rng(seed).uniform(0.0, box, size=(n_frames, n_atoms, 3))


def test_ideal_gas_partial_rdf_is_one_within_noise():
    box, n_frames = 20.0, 40
    positions = uniform_gas(box, 60, n_frames)
    species = np.where(np.arange(60) % 2 == 0, 18, 36)
    for pair, n_pairs in (((18, 18), 30 * 29 / 2), ((18, 36), 30 * 30)):
        r, g = partial_rdf(positions, species, box * np.eye(3), pair, r_max=10.0, n_bins=20)
        np.testing.assert_allclose(r, np.arange(20) * 0.5 + 0.25)
        shell = 4 / 3 * np.pi * ((r + 0.25) ** 3 - (r - 0.25) ** 3)
        expected_count = n_frames * n_pairs * shell / box ** 3
        assert np.all(np.abs(g - 1.0)[r > 2.0] < 5 / np.sqrt(expected_count[r > 2.0]))
        total = np.sum(expected_count)
        assert abs(np.sum(g * expected_count) / total - 1.0) < 5 / np.sqrt(total)


def test_ideal_gas_partial_rdf_with_one_cell_per_frame_is_one_within_noise():
    boxes = np.array([18.0, 20.0, 22.0] * 10)
    frac = np.random.default_rng(1).uniform(0.0, 1.0, size=(len(boxes), 60, 3))
    positions = frac * boxes[:, None, None]
    r, g = partial_rdf(positions, np.full(60, 18), boxes[:, None, None] * np.eye(3), (18, 18),
                       r_max=9.0, n_bins=9)
    assert np.all(np.abs(g - 1.0)[r > 3.0] < 0.1)
    with pytest.raises(ValueError, match="cell holds 2 frames but positions hold 30"):
        partial_rdf(positions, np.full(60, 18), np.stack([np.eye(3) * 20] * 2), (18, 18),
                    r_max=9.0, n_bins=9)


def test_free_space_pair_density_integrates_to_one():
    positions = uniform_gas(5.0, 12, 8, seed=2)
    species = np.array([6, 1, 1] * 4)
    r, p = partial_rdf(positions, species, None, (1, 6), r_max=12.0, n_bins=48)
    assert np.sum(p * np.diff(np.linspace(0, 12.0, 49))) == pytest.approx(1.0, rel=1e-12)
    with pytest.raises(ValueError, match=r"no \(1, 6\) pair lies within r_max"):
        partial_rdf(positions + np.array([0, 0, 100.0]) * (species == 1)[:, None], species, None,
                    (1, 6), r_max=12.0, n_bins=48)


def test_partial_rdf_rejects_absent_species_and_r_max_beyond_half_the_cell():
    positions = uniform_gas(8.0, 10, 2)
    with pytest.raises(ValueError, match=r"species pair \(18, 54\).*contain species 18"):
        partial_rdf(positions, np.full(10, 18), 8.0 * np.eye(3), (18, 54), r_max=3.0, n_bins=5)
    with pytest.raises(ValueError, match="exceeds half the smallest cell width"):
        partial_rdf(positions, np.full(10, 18), 8.0 * np.eye(3), (18, 18), r_max=4.5, n_bins=5)


def test_partial_rdf_equals_stability_rdf():
    rng = np.random.default_rng(3)
    positions = rng.uniform(-0.5, 1.5, size=(5, 30, 3)) @ TRICLINIC
    species = np.where(np.arange(30) % 3 == 0, 8, 1)
    half = cell_heights(TRICLINIC).min() / 2
    for pair in ((8, 8), (8, 1), (1, 8), (1, 1)):
        _, g = partial_rdf(positions, species, TRICLINIC, pair, r_max=half, n_bins=30)
        np.testing.assert_allclose(g, rdf(positions, TRICLINIC, species, pair, r_max=half, n_bins=30),
                                   rtol=0, atol=1e-12)
