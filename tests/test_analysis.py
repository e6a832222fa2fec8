"""Analyses of explained n-body tables: binned curves, triplet centres, body-order shares,
decay lengths, atomwise energies, the written report files and loading errors.
(The radial distribution function, :func:`jaxrel.geometry.partial_rdf`, is tested in
test_geometry.)"""

import itertools
import json

import numpy as np
import pytest

from jaxrel.analysis import (atomwise_comparison, atomwise_relevance, body_order_shares, interaction_strength,
                             pair_relevance_curve, plot_atomwise, rdf_label, triplet_angle_profile,
                             triplet_distance_profile, write_analysis)
from jaxrel.cli import main
from jaxrel.relevance import Explanation, Table


def _min_image_distances(positions, box):
    d = positions[None] - positions[:, None]
    if box is not None:
        d -= box * np.round(d / box)
    return np.linalg.norm(d, axis=-1)


def _angles_from_sides(d):
    """(m, 3) sides (0,1), (0,2), (1,2) → angles (degrees) at atoms 0, 1, 2 by the law of cosines."""
    d01, d02, d12 = d.T
    cos = np.stack([(d01**2 + d02**2 - d12**2) / (2 * d01 * d02),
                    (d01**2 + d12**2 - d02**2) / (2 * d01 * d12),
                    (d02**2 + d12**2 - d01**2) / (2 * d02 * d12)], axis=1)
    return np.degrees(np.arccos(np.clip(cos, -1, 1)))


def frame_tables(rng, positions, species, box, cutoff, frame=0) -> dict[int, Table]:
    """Random relevance for every atom, every pair within ``cutoff`` and every triplet with two
    sides within it, of one frame (``box`` None = free molecule)."""
    d = _min_image_distances(positions, box)
    tables = {}
    for n in (1, 2, 3):
        sets = np.array([s for s in itertools.combinations(range(len(positions)), n)
                         if sum(d[a, b] < cutoff for a, b in itertools.combinations(s, 2)) >= n - 1],
                        int).reshape(-1, n)
        dist = np.stack([d[sets[:, a], sets[:, b]] for a, b in itertools.combinations(range(n), 2)],
                        axis=1) if n > 1 else np.zeros((len(sets), 0))
        tables[n] = Table(frame=np.full(len(sets), frame), atoms=sets, species=species[sets],
                          relevance=rng.normal(scale=1.0 / n, size=len(sets)), distances=dist,
                          angles=_angles_from_sides(dist) if n == 3 else None)
    return tables


def synthetic_explained(root, *, frames=(2, 5, 7), n_atoms=10, box=9.0, cutoff=4.0, residual=0.0, seed=0):
    """An explanation of random Ar/Kr frames (:func:`frame_tables`) with a consistent
    accounting (species shifts −5 eV, small random conservation errors), saved to ``root``
    as ``jaxrel explain`` would. Returns the folder and the explanation."""
    rng = np.random.default_rng(seed)
    species = np.array([18] * (n_atoms - n_atoms // 3) + [36] * (n_atoms // 3))
    positions = rng.uniform(0, box or 6.0, (len(frames), n_atoms, 3))
    per_frame = [frame_tables(rng, positions[k], species, box, cutoff, f) for k, f in enumerate(frames)]
    sum_relevance = np.array([sum(float(t.relevance.sum()) for t in tables.values()) + residual
                              for tables in per_frame])
    error = rng.normal(scale=1e-3, size=len(frames))
    explanation = Explanation(
        tables={n: Table.concatenate([t[n] for t in per_frame]) for n in (1, 2, 3)}, frames=np.array(frames),
        energy=sum_relevance - 5.0 + error, species_shift=np.full(len(frames), -5.0), sum_relevance=sum_relevance,
        higher_order_residual=np.full(len(frames), residual), seconds=np.full(len(frames), 0.1),
        positions=positions, species=species,
        cell=None if box is None else np.tile(box * np.eye(3), (len(frames), 1, 1)), atomwise_energy=None,
        metadata={"rule": "gi"})
    explanation.save(root)
    return root, explanation


def _random_pair_table(rng, m=400) -> Table:
    z = rng.choice([1, 6, 8], size=(m, 2))
    return Table(frame=np.zeros(m, int), atoms=np.sort(rng.integers(0, 50, (m, 2)), axis=1), species=z,
                 relevance=rng.normal(size=m), distances=rng.uniform(0.8, 5.0, (m, 1)))


def _brute_force_bins(keys, x, values, edges):
    out = {}
    for key in {tuple(k) for k in keys.tolist()}:
        means, sems, counts = [], [], []
        for b in range(len(edges) - 1):
            upper = x <= edges[b + 1] if b == len(edges) - 2 else x < edges[b + 1]
            v = [values[i] for i in range(len(x)) if tuple(keys[i]) == key and x[i] >= edges[b] and upper[i]]
            counts.append(len(v))
            means.append(np.mean(v) if v else 0.0)
            sems.append(np.std(v, ddof=1) / np.sqrt(len(v)) if len(v) > 1 else 0.0)
        if sum(counts):
            out[key] = (np.array(means), np.array(sems), np.array(counts))
    return out


def test_pair_curve_means_and_sems_equal_a_brute_force_loop():
    rng = np.random.default_rng(1)
    table = _random_pair_table(rng)
    curves = pair_relevance_curve(table, r_max=4.2, n_bins=7)
    r = table.distances[:, 0]
    edges = np.linspace(r.min(), 4.2, 8)
    expected = _brute_force_bins(np.sort(table.species, axis=1), r, table.relevance, edges)
    assert set(curves) == set(expected) == {(1, 1), (1, 6), (1, 8), (6, 6), (6, 8), (8, 8)}
    for key, (mean, sem, count) in expected.items():
        np.testing.assert_array_equal(curves[key].count, count)
        np.testing.assert_allclose(curves[key].mean, mean, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(curves[key].sem, sem, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(curves[key].x, 0.5 * (edges[1:] + edges[:-1]))
    assert sum(c.count.sum() for c in curves.values()) == np.sum(r <= 4.2)


def test_triplet_profiles_equal_a_brute_force_loop_over_centres():
    rng = np.random.default_rng(2)
    t3 = frame_tables(rng, rng.uniform(0, 8.0, (9, 3)), rng.choice([18, 36], 9), 8.0, 4.0)[3]
    keys, angle, shortest = [], [], []
    for z, d, a in zip(t3.species, t3.distances, t3.angles):
        side = max(range(3), key=lambda s: (d[s], -s))  # first longest side wins ties
        centre = {0: 2, 1: 1, 2: 0}[side]
        ends = sorted(z[j] for j in range(3) if j != centre)
        keys.append((ends[0], z[centre], ends[1]))
        angle.append(a[centre])
        shortest.append(min(d))
    keys, angle, shortest = np.array(keys), np.array(angle), np.array(shortest)
    profile = triplet_angle_profile(t3, n_bins=12)
    expected = _brute_force_bins(keys, angle, t3.relevance, np.linspace(0, 180, 13))
    assert set(profile) == set(expected)
    for key, (mean, sem, count) in expected.items():
        np.testing.assert_array_equal(profile[key].count, count)
        np.testing.assert_allclose(profile[key].mean, mean, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(profile[key].sem, sem, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(profile[key].x, np.arange(12) * 15 + 7.5)
    by_distance = triplet_distance_profile(t3, n_bins=5)
    edges = np.linspace(shortest.min(), shortest.max(), 6)
    expected = _brute_force_bins(keys, shortest, t3.relevance, edges)
    for key, (mean, _, count) in expected.items():
        np.testing.assert_array_equal(by_distance[key].count, count)
        np.testing.assert_allclose(by_distance[key].mean, mean, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(by_distance[key].x, 0.5 * (edges[1:] + edges[:-1]))


@pytest.mark.parametrize("centre", [0, 1, 2])
def test_triplet_centre_is_the_atom_opposite_the_longest_side(centre):
    # An H–O–C bend of 100.3° at O: O–H 0.96 Å, O–C 1.40 Å, H···C the longest side.
    bend = np.radians(100.3)
    sides = {("H", "O"): 0.96, ("O", "C"): 1.40,
             ("H", "C"): np.sqrt(0.96**2 + 1.40**2 - 2 * 0.96 * 1.40 * np.cos(bend))}
    order = {0: ["O", "H", "C"], 1: ["H", "O", "C"], 2: ["C", "H", "O"]}[centre]
    z = {"H": 1, "C": 6, "O": 8}

    def side(a, b):
        return sides.get((a, b), sides.get((b, a)))

    d = np.array([[side(order[0], order[1]), side(order[0], order[2]), side(order[1], order[2])]])
    table = Table(frame=np.zeros(1, int), atoms=np.array([[0, 1, 2]]), species=np.array([[z[s] for s in order]]),
                  relevance=np.array([0.25]), distances=d, angles=_angles_from_sides(d))
    profile = triplet_angle_profile(table, n_bins=180)
    assert list(profile) == [(1, 8, 6)]
    hit = np.flatnonzero(profile[(1, 8, 6)].count)
    assert hit.tolist() == [100] and profile[(1, 8, 6)].mean[100] == 0.25
    assert profile[(1, 8, 6)].x[100] == pytest.approx(100.5)


def test_body_order_shares_sum_to_one_when_the_residual_is_zero(tmp_path):
    folder, synthetic = synthetic_explained(tmp_path / "a", frames=(3, 7), residual=0.0)
    explanation = Explanation.load(folder)
    tables = explanation.tables
    shares = body_order_shares(explanation)
    assert shares.frames == [3, 7] and shares.orders == [1, 2, 3]
    for kind in (shares.energy_share, shares.abs_share):
        per_frame = np.array([kind[str(n)].per_frame for n in (1, 2, 3)])
        np.testing.assert_allclose(per_frame.sum(axis=0), 1.0, rtol=1e-12)
        assert kind["residual"].pooled == 0.0
        assert kind["2"].mean == pytest.approx(kind["2"].per_frame.mean(), rel=1e-12)
    rows = tables[2].frame == 7
    assert shares.energy_share["2"].per_frame[1] == pytest.approx(
        tables[2].relevance[rows].sum() / explanation.sum_relevance[1], rel=1e-12)
    everything = sum(np.abs(t.relevance).sum() for t in tables.values())
    assert shares.abs_share["3"].pooled == pytest.approx(np.abs(tables[3].relevance).sum() / everything)
    np.testing.assert_allclose(explanation.conservation_error, synthetic.conservation_error, rtol=0, atol=1e-15)


def test_body_order_shares_give_the_residual_its_part(tmp_path):
    _, explanation = synthetic_explained(tmp_path / "r", frames=(0, 1), residual=0.7)
    shares = body_order_shares(Explanation.load(tmp_path / "r"))
    listed = sum(shares.energy_share[str(n)].pooled for n in (1, 2, 3))
    assert listed + shares.energy_share["residual"].pooled == pytest.approx(1.0)
    assert abs(shares.energy_share["residual"].pooled) > 0.01
    assert shares.energy_share["residual"].pooled == pytest.approx(1.4 / explanation.sum_relevance.sum())


def test_decay_length_is_recovered_exactly_from_an_exponential():
    rng = np.random.default_rng(3)
    truth = {(18, 18): (2.0, 0.8), (18, 36): (0.3, 1.7)}
    species, r, rel = [], [], []
    for (za, zb), (amplitude, decay) in truth.items():
        grid = np.repeat(2.0 + 0.5 * np.arange(9), rng.integers(1, 6, 9))
        species += [(zb, za) if i % 2 else (za, zb) for i in range(len(grid))]
        r.append(grid)
        rel.append(amplitude * np.exp(-grid / decay) * rng.choice([-1, 1], len(grid)))
    # a short-range wall that the fit must leave out through r_min
    species += [(18, 18)] * 3
    r.append(np.full(3, 1.5))
    rel.append(np.full(3, 1e-4))
    r, rel = np.concatenate(r), np.concatenate(rel)
    table = Table(frame=np.zeros(len(r), int), atoms=np.zeros((len(r), 2), int), species=np.array(species),
                  relevance=rel, distances=r[:, None])
    strength = interaction_strength(table, r_min=1.9, n_bins=10)
    for key, (amplitude, decay) in truth.items():
        assert strength[key].decay_length_A == pytest.approx(decay, rel=1e-10)
        assert strength[key].amplitude_eV == pytest.approx(amplitude, rel=1e-10)
        mine = np.all(np.sort(table.species, axis=1) == key, axis=1)
        assert strength[key].mean_abs_eV == pytest.approx(np.abs(rel[mine]).mean(), rel=1e-12)
        assert strength[key].count == mine.sum()
        assert strength[key].n_fit_bins == 9 and strength[key].bins.count.sum() == mine.sum()
    wall_included = interaction_strength(table, n_bins=10)[(18, 18)].decay_length_A
    assert wall_included != pytest.approx(0.8, rel=1e-3)


def test_atomwise_comparison_of_y_equals_2x_plus_1():
    x = np.linspace(-1.0, 3.0, 17)
    stats = atomwise_comparison(2 * x + 1, x)
    assert stats.slope == pytest.approx(2.0) and stats.intercept == pytest.approx(1.0)
    assert stats.pearson_r == pytest.approx(1.0) and stats.n == 17
    assert stats.mae == pytest.approx(np.mean(np.abs(x + 1)))
    assert stats.rmse == pytest.approx(np.sqrt(np.mean((x + 1) ** 2)))
    assert stats.r2 == pytest.approx(1 - np.sum((x + 1) ** 2) / np.sum((x - x.mean()) ** 2))
    with pytest.raises(ValueError, match="reference energies are all equal"):
        atomwise_comparison(x, np.ones_like(x))


def test_atomwise_relevance_splits_terms_equally_and_sums_to_the_frame_total(tmp_path):
    _, explanation = synthetic_explained(tmp_path / "w", frames=(4, 9), n_atoms=8)
    tables = explanation.tables
    for frame in (4, 9):
        energy = atomwise_relevance(tables, 8, frame)
        total = sum(t.relevance[t.frame == frame].sum() for t in tables.values())
        assert energy.sum() == pytest.approx(total, rel=1e-12, abs=1e-12)
        atom3 = sum(r / n for n, t in tables.items()
                    for f, atoms, r in zip(t.frame, t.atoms, t.relevance) if f == frame and 3 in atoms)
        assert energy[3] == pytest.approx(atom3, rel=1e-12)


def test_atomwise_relevance_of_a_frame_in_no_table_is_a_clear_error(tmp_path):
    _, explanation = synthetic_explained(tmp_path / "w", frames=(4, 9), n_atoms=8)
    with pytest.raises(ValueError, match="frame 5 is in none of the tables"):
        atomwise_relevance(explanation.tables, 8, 5)


def test_rdf_label_is_g_of_r_with_a_cell_and_a_pair_density_without():
    assert rdf_label(np.eye(3)) == "g(r)"
    assert rdf_label(None).startswith("pair-distance density")


@pytest.mark.parametrize("box", [9.0, None], ids=["periodic", "molecule"])
def test_write_analysis_writes_every_figure_and_json_without_nan(tmp_path, box):
    folder, _ = synthetic_explained(tmp_path / "explained", box=box, residual=0.05)
    explained = Explanation.load(folder)
    assert (explained.cell is None) == (box is None)
    local = np.random.default_rng(6).normal(size=(3, 10))
    written = write_analysis(explained, tmp_path / "analysis", local_energies=local, n_bins=12)
    assert set(written.figures) == {"body_order_shares", "pair_curves", "decay", "triplet_angles",
                                    "triplet_distances", "atomwise"}
    assert set(written.files) == {"pair_curves", "rdf", "interaction_strength", "triplet_angles",
                                  "triplet_distances", "analysis"}
    for path in written.figures.values():
        assert path.parent == tmp_path / "analysis" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name, path in written.files.items():
        lines = path.read_text().splitlines()
        assert len(lines) > 1, name
    # the (18, 18) mean in the CSV is the curve's, and the in-memory result is the same curve
    rows = [line.split(",") for line in written.files["pair_curves"].read_text().splitlines()[1:]]
    curve = pair_relevance_curve(explained.tables[2], n_bins=12)[(18, 18)]
    np.testing.assert_allclose([float(row[3]) for row in rows if row[0] == "18-18"], curve.mean)
    np.testing.assert_array_equal(written.results["pair_curves"][(18, 18)].mean, curve.mean)
    np.testing.assert_array_equal(written.results["body_order_shares"].energy_share["2"].per_frame,
                                  body_order_shares(explained).energy_share["2"].per_frame)
    assert written.results["atomwise"].n == 30

    def no_nan(token):
        raise AssertionError(f"{token} in analysis.json")

    text = written.files["analysis"].read_text(encoding="utf-8")
    assert written.files["analysis"].name == "analysis.json"
    result = json.loads(text, parse_constant=no_nan)
    assert result["rdf"]["kind"] == rdf_label(explained.cell)
    assert set(result["pair_curves"]) == {"18-18", "18-36", "36-36"}
    assert result["atomwise"]["n"] == 30


def _corrupt_npz(folder):
    (folder / "nbody.npz").write_bytes(b"not a zip file")


def _corrupt_json(folder):
    (folder / "summary.json").write_text("{\"frames\": [")


def _other_run(folder):
    summary = json.loads((folder / "summary.json").read_text())
    summary["frames"][0]["body_order_totals_eV"]["2"] += 1.0
    (folder / "summary.json").write_text(json.dumps(summary))


def _drop_arrays(folder, *keys):
    with np.load(folder / "nbody.npz") as data:
        arrays = {k: data[k] for k in data.files if k not in keys}
    np.savez(folder / "nbody.npz", **arrays)


def _missing_key(folder):
    _drop_arrays(folder, "order3_angles")


def _no_geometry(folder):
    _drop_arrays(folder, "positions", "frame_index")


@pytest.mark.parametrize("damage, error, message", [
    (lambda folder: (folder / "nbody.npz").unlink(), FileNotFoundError,
     r"nbody.npz does not exist: run `jaxrel explain"),
    (_corrupt_npz, ValueError, "is not a readable npz file"),
    (_corrupt_json, ValueError, "summary.json is not valid JSON"),
    (_other_run, ValueError,
     r"nbody.npz: the 2-body terms of frame 2 sum to .* but summary.json lists .*different runs"),
    (_missing_key, ValueError, "lacks order3_angles"),
    (_no_geometry, ValueError, r"nbody.npz has no frame geometry \(positions, frame_index\)"),
])
def test_loading_an_explanation_names_the_bad_file_in_one_line(tmp_path, damage, error, message):
    folder, _ = synthetic_explained(tmp_path / "explained")
    damage(folder)
    with pytest.raises(error, match=message) as info:
        Explanation.load(folder)
    assert "\n" not in str(info.value)


def test_write_analysis_reads_a_real_jaxrel_explain_folder(model_and_data, tmp_path):
    model, data = model_and_data
    assert main(["explain", "--model", str(model), "--data", str(data), "--frames", "0:3", "--order", "2",
                 "--quiet", "--out", str(tmp_path / "explained")]) == 0
    explained = Explanation.load(tmp_path / "explained")
    assert sorted(explained.tables) == [1, 2] and explained.positions.shape == (3, 3, 3)
    written = write_analysis(explained, tmp_path / "analysis")
    assert set(written.figures) == {"body_order_shares", "pair_curves", "decay"}
    assert set(written.files) == {"pair_curves", "rdf", "interaction_strength", "analysis"}
    shares = json.loads((tmp_path / "analysis" / "analysis.json").read_text())["body_order_shares"]
    for k, frame in enumerate(explained.frames):
        assert shares["energy_share"]["1"]["per_frame"][k] + shares["energy_share"]["2"]["per_frame"][k] \
            == pytest.approx(1.0)
        assert atomwise_relevance(explained.tables, 3, frame).sum() == pytest.approx(
            explained.sum_relevance[k], abs=1e-10)


def test_plot_atomwise_draws_a_constant_reference_and_still_rejects_bad_shapes(tmp_path):
    """A null test's exact 3-body energies are all 0: no correlation, but a figure."""
    path = plot_atomwise(np.linspace(-1e-3, 1e-3, 7), np.zeros(7), tmp_path / "null.png", xlabel="x", ylabel="y")
    assert path.read_bytes().startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="shape"):
        plot_atomwise(np.zeros(3), np.zeros(4), tmp_path / "bad.png", xlabel="x", ylabel="y")
