"""`jaxrel report` and the recovery of ground truth: the page, its figures, term matching."""

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest

from jaxrel.analysis import Explained
from jaxrel.cli import main
from jaxrel.data.noble_gas import generate_noble_gas, save_noble_gas
from jaxrel.models import ModelConfig, Potential
from jaxrel.recovery import compare_with_ground_truth, write_recovery
from jaxrel.train import save_checkpoint
from test_explain import model_and_data  # noqa: F401  (fixture: a tiny PaiNN and Morse dimers)

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


def test_report_of_a_molecule_run_has_no_recovery_section(model_and_data, tmp_path):  # noqa: F811
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


def exact_explained(truth_path, frames, scale=1.0) -> Explained:
    """An explained run whose 2- and 3-body terms are ``scale`` × the exact terms."""
    t = np.load(truth_path)
    cell = np.asarray(t["cell"])

    def vector(frame, a, b):
        d = t["coords"][frame, b] - t["coords"][frame, a]
        frac = d @ np.linalg.inv(cell)
        return (frac - np.round(frac)) @ cell

    tables = {}
    for n, key in ((2, "pair"), (3, "triplet")):
        rows = np.isin(t[f"{key}_frame"], frames)
        atoms, frame = t[f"{key}_atoms"][rows], t[f"{key}_frame"][rows]
        sides = [(0, 1), (0, 2), (1, 2)] if n == 3 else [(0, 1)]
        tables[n] = {"frame": frame, "atoms": atoms, "species": t["species"][atoms],
                     "relevance": scale * t[f"{key}_energy"][rows],
                     "distances": np.stack([np.linalg.norm(vector(frame, atoms[:, a], atoms[:, b]), axis=1)
                                            for a, b in sides], axis=1)}
        if n == 3:
            tables[3]["angles"] = np.stack([np.degrees(np.arccos(np.clip(np.sum(
                u * v, 1) / np.linalg.norm(u, axis=1) / np.linalg.norm(v, axis=1), -1, 1)))
                for c in range(3)
                for u, v in [(vector(frame, atoms[:, c], atoms[:, (c + 1) % 3]),
                              vector(frame, atoms[:, c], atoms[:, (c + 2) % 3]))]], axis=1)
    return Explained(tables=tables, summary={}, positions=t["coords"][frames], species=t["species"],
                     cell=np.broadcast_to(t["cell"], (len(frames), 3, 3)), frame_index=np.asarray(frames))


def test_recovery_of_the_exact_terms_is_perfect(truth, tmp_path):
    t = np.load(truth)
    explained = exact_explained(truth, [0, 2])
    result = compare_with_ground_truth(explained, t, atomwise_energy=t["local_energies"][[0, 2]])
    for name in ("pairs", "triplets"):
        assert result[name]["mae_eV"] == 0.0
        assert result[name]["pearson_r"] == pytest.approx(1.0)
        np.testing.assert_allclose(result[name]["recovered_total_eV"], result[name]["exact_total_eV"])
        assert result[name]["missed_exact_eV"] == [0.0, 0.0]
    assert result["atomwise"]["r2"] == pytest.approx(1.0)
    profiles = result["triplet_angle_profiles"]
    assert profiles["exact"] and profiles["exact"].keys() == profiles["recovered"].keys()
    for key, exact in profiles["exact"].items():
        np.testing.assert_allclose(profiles["recovered"][key]["mean"], exact["mean"], rtol=1e-12)
    written = write_recovery(result, tmp_path)
    assert all((tmp_path / f).stat().st_size > 0 for f in written["figures"].values())


def test_recovery_counts_wrong_and_missing_terms(truth):
    t = np.load(truth)
    explained = exact_explained(truth, [1], scale=0.5)
    dropped = explained.tables[2]["relevance"].size // 2
    for key in ("frame", "atoms", "species", "relevance", "distances"):
        explained.tables[2][key] = explained.tables[2][key][dropped:]
    result = compare_with_ground_truth(explained, t)
    exact_pairs = t["pair_energy"][t["pair_frame"] == 1]
    assert result["pairs"]["missed_exact_eV"][0] == pytest.approx(exact_pairs[:dropped].sum())
    assert result["pairs"]["slope"] == pytest.approx(0.5)
    assert result["triplets"]["recovered_total_eV"][0] == pytest.approx(
        0.5 * t["triplet_energy"][t["triplet_frame"] == 1].sum())


def test_recovery_rejects_data_without_ground_truth(truth):
    t = dict(np.load(truth))
    del t["pair_energy"]
    with pytest.raises(ValueError, match="no exact decomposition"):
        compare_with_ground_truth(exact_explained(truth, [0]), t)
