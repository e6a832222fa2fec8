"""`jaxrel report` and the recovery of ground truth: the page, its figures, term matching."""

import base64
import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest

from jaxrel.analysis import build_report, compare_with_ground_truth, write_recovery
from jaxrel.files import jsonable
from jaxrel.checkpoint import save_checkpoint
from jaxrel.cli import main
from jaxrel.data.noble_gas import generate_noble_gas, save_noble_gas
from jaxrel.models import ModelConfig, Potential
from jaxrel.relevance import Explanation, Table

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def truth(tmp_path_factory):
    """A tiny Ar/Kr ground-truth liquid (32 atoms, 3 frames, 5.5 Å cutoff) on disk."""
    path = tmp_path_factory.mktemp("truth") / "arkr.npz"
    save_noble_gas(generate_noble_gas("ArKr", n_atoms=32, n_frames=3, seed=2, cutoff=5.5,
                                      equilibration_steps=200), path)
    return path


def check_page(report: Path) -> str:
    """Every embedded image is a PNG and every linked file exists and is non-empty."""
    page = report.read_text(encoding="utf-8")
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert images, "the page embeds no figure"
    for data in images:
        assert base64.b64decode(data).startswith(PNG)
    links = re.findall(r"href=['\"]([^'\"]+)['\"]", page)
    assert links, "the page links no file"
    for link in links:
        target = report.parent / link
        assert target.is_file() and target.stat().st_size > 0, link
    return page


def test_report_of_a_ground_truth_run_has_every_figure_and_the_recovery(truth, tmp_path):
    config = ModelConfig("schnet", (18, 36), cutoff=5.5, n_features=8, n_interactions=2, n_rbf=8,
                         dtype="float64")
    pot, params = Potential.create(config, {18: -0.1, 36: -0.2}, energy_scale=0.05, seed=0)
    save_checkpoint(tmp_path / "model", pot, params)
    explained = tmp_path / "explained"
    assert main(["explain", "--model", str(tmp_path / "model"), "--data", str(truth), "--frames", "0:2",
                 "--order", "3", "--quiet", "--out", str(explained)]) == 0
    assert main(["report", "--explained", str(explained), "--out", str(tmp_path / "page")]) == 0
    report = tmp_path / "page" / "report.html"
    page = check_page(report)
    for figure in ("body_order_shares", "pair_curves", "decay", "triplet_angles", "triplet_distances",
                   "recovery_pair_curves", "recovery_pairs", "recovery_triplets", "recovery_triplet_angles",
                   "recovery_three_body_totals", "recovery_atomwise"):
        png = tmp_path / "page" / "figures" / f"{figure}.png"
        assert png.read_bytes().startswith(PNG), figure
        assert f'alt="{figure}"' in page
    assert "Recovery of the exact physics" in page and "Conservation" in page
    recovery = json.loads((tmp_path / "page" / "figures" / "recovery.json").read_text())
    assert recovery["pairs"]["n"] > 0 and len(recovery["triplets"]["exact_total_eV"]) == 2


def test_report_of_a_molecule_run_has_no_recovery_section(model_and_data, tmp_path):
    model, data = model_and_data
    explained = tmp_path / "explained"
    assert main(["explain", "--model", str(model), "--data", str(data), "--frames", "0:3", "--order", "2",
                 "--quiet", "--out", str(explained)]) == 0
    assert main(["report", "--explained", str(explained)]) == 0
    page = check_page(explained / "report.html")
    assert "Recovery" not in page and 'alt="pair_curves"' in page


def test_report_of_a_missing_folder_is_a_one_line_error(tmp_path, capsys):
    assert main(["report", "--explained", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert "nothing" in err and "\n" not in err


def exact_explained(truth_path, frames, scale=1.0) -> Explanation:
    """An explanation whose 2- and 3-body terms are ``scale`` × the exact terms of ``frames``
    and whose atomwise energies are the exact local energies."""
    t = np.load(truth_path)
    cell = np.asarray(t["cell"])
    frames = np.asarray(frames)

    def vector(frame, a, b):
        d = t["coords"][frame, b] - t["coords"][frame, a]
        frac = d @ np.linalg.inv(cell)
        return (frac - np.round(frac)) @ cell

    tables = {}
    for n, key in ((2, "pair"), (3, "triplet")):
        rows = np.isin(t[f"{key}_frame"], frames)
        atoms, frame = t[f"{key}_atoms"][rows], t[f"{key}_frame"][rows]
        sides = [(0, 1), (0, 2), (1, 2)] if n == 3 else [(0, 1)]
        angles = None
        if n == 3:
            angles = np.stack([np.degrees(np.arccos(np.clip(np.sum(
                u * v, 1) / np.linalg.norm(u, axis=1) / np.linalg.norm(v, axis=1), -1, 1)))
                for c in range(3)
                for u, v in [(vector(frame, atoms[:, c], atoms[:, (c + 1) % 3]),
                              vector(frame, atoms[:, c], atoms[:, (c + 2) % 3]))]], axis=1)
        tables[n] = Table(frame=frame, atoms=atoms, species=t["species"][atoms],
                          relevance=scale * t[f"{key}_energy"][rows],
                          distances=np.stack([np.linalg.norm(vector(frame, atoms[:, a], atoms[:, b]), axis=1)
                                              for a, b in sides], axis=1), angles=angles)
    local = np.asarray(t["local_energies"], np.float64)[frames]
    totals = sum(table.frame_sums(frames) for table in tables.values())
    zeros = np.zeros(len(frames))
    return Explanation(tables=tables, frames=frames, energy=local.sum(1), species_shift=zeros,
                       sum_relevance=totals, higher_order_residual=zeros, seconds=zeros,
                       positions=t["coords"][frames], species=t["species"],
                       cell=np.broadcast_to(t["cell"], (len(frames), 3, 3)), atomwise_energy=local,
                       metadata={"data": str(truth_path)})


def test_recovery_of_the_exact_terms_is_perfect(truth, tmp_path):
    t = np.load(truth)
    result = compare_with_ground_truth(exact_explained(truth, [0, 2]), t)
    np.testing.assert_array_equal(result.frames, [0, 2])
    for name in ("pairs", "triplets"):
        terms = getattr(result, name)
        np.testing.assert_array_equal(terms.recovered, terms.exact)
        summary = terms.summary()
        assert summary["mae_eV"] == 0.0 and summary["n"] == len(terms.exact) > 0
        assert summary["pearson_r"] == pytest.approx(1.0) and summary["slope"] == pytest.approx(1.0)
        assert summary["r2"] == pytest.approx(1.0) and summary["rmse"] == 0.0
        np.testing.assert_allclose(summary["recovered_total_eV"], summary["exact_total_eV"])
        assert summary["missed_exact_eV"] == [0.0, 0.0]
    assert result.atomwise.r2 == pytest.approx(1.0) and result.atomwise.n == 2 * 32
    profiles = result.triplet_angle_profiles
    assert profiles["exact"] and profiles["exact"].keys() == profiles["recovered"].keys()
    for key, exact in profiles["exact"].items():
        np.testing.assert_allclose(profiles["recovered"][key].mean, exact.mean, rtol=1e-12)
    written = write_recovery(result, tmp_path)
    assert set(written.figures) == {"recovery_pair_curves", "recovery_pairs", "recovery_triplets",
                                    "recovery_triplet_angles", "recovery_three_body_totals", "recovery_atomwise"}
    assert all(path.stat().st_size > 0 for path in written.figures.values())
    on_disk = json.loads(written.files["recovery"].read_text())
    assert on_disk == jsonable(result.summary()) and on_disk["pairs"]["mae_eV"] == 0.0


def test_report_of_an_explanation_in_memory_compares_its_atomwise_energies(truth, tmp_path):
    explanation = exact_explained(truth, [0, 1])
    with pytest.raises(ValueError, match="needs out_dir"):
        build_report(explanation)
    result = build_report(explanation, tmp_path / "page", title="exact terms")
    assert result["recovery"] is not None and result["recovery"].atomwise.r2 == pytest.approx(1.0)
    assert "recovery_atomwise" in result["figures"] and result["report"] == tmp_path / "page" / "report.html"
    page = check_page(result["report"])
    assert "exact terms" in page and "Recovery of the exact physics" in page
    no_atomwise = dataclasses.replace(explanation, atomwise_energy=None)
    assert compare_with_ground_truth(no_atomwise, np.load(truth)).atomwise is None


def test_recovery_counts_wrong_and_missing_terms(truth):
    t = np.load(truth)
    explained = exact_explained(truth, [1], scale=0.5)
    dropped = len(explained.tables[2]) // 2
    explained = dataclasses.replace(explained, tables={**explained.tables,
                                                       2: explained.tables[2].select(slice(dropped, None))})
    result = compare_with_ground_truth(explained, t)
    exact_pairs = t["pair_energy"][t["pair_frame"] == 1]
    pairs = result.pairs.summary()
    assert pairs["missed_exact_eV"][0] == pytest.approx(exact_pairs[:dropped].sum())
    assert pairs["slope"] == pytest.approx(0.5) and pairs["n"] == len(exact_pairs) - dropped
    assert result.triplets.summary()["recovered_total_eV"][0] == pytest.approx(
        0.5 * t["triplet_energy"][t["triplet_frame"] == 1].sum())


def test_recovery_rejects_data_without_ground_truth(truth):
    t = dict(np.load(truth))
    del t["pair_energy"]
    with pytest.raises(ValueError, match="no exact decomposition"):
        compare_with_ground_truth(exact_explained(truth, [0]), t)
