"""The faithfulness audit (jaxrel.analysis.faithfulness, jaxrel audit): MBE beside GNN-LRP and the exact terms."""

import json

import numpy as np
import pytest
from helpers import argon_potential

from jaxrel.analysis import build_report
from jaxrel.analysis.diagnostics import DEFINITIONS
from jaxrel.analysis.faithfulness import compare_decompositions, run_audit
from jaxrel.analysis.recovery import load_ground_truth
from jaxrel.checkpoint import save_checkpoint
from jaxrel.cli import main
from jaxrel.data import read_frames
from jaxrel.data.noble_gas import generate_noble_gas, save_noble_gas
from jaxrel.relevance import Explanation, Table


@pytest.fixture(scope="module")
def argon_file(tmp_path_factory):
    """Two frames of 32-atom liquid argon (LJ + ATM, cutoff 4 Å) with the exact terms."""
    path = tmp_path_factory.mktemp("audit") / "argon.npz"
    save_noble_gas(generate_noble_gas("Ar", n_atoms=32, n_frames=2, cutoff=4.0, equilibration_steps=60,
                                      steps_between_frames=10, seed=3), path)
    return path


@pytest.fixture(scope="module")
def audited(argon_file):
    potential, params = argon_potential("schnet")
    frames = read_frames(argon_file)
    return run_audit(potential, params, frames, max_order=3, rules=("gi", "lrp-gamma"),
                     truth=load_ground_truth(argon_file), data_path=argon_file)


def exact_copy(mbe: Explanation, truth) -> Explanation:
    """The MBE explanation with every 2- and 3-body term replaced by its exact energy."""
    recovery = compare_decompositions({"mbe": mbe}, truth).recovery["mbe"]
    tables = dict(mbe.tables)
    tables[1] = mbe.tables[1].with_relevance(np.zeros(len(mbe.tables[1])))
    tables[2] = mbe.tables[2].with_relevance(recovery.pairs.exact)
    tables[3] = mbe.tables[3].with_relevance(recovery.triplets.exact)
    return Explanation(**{**mbe.__dict__, "tables": tables, "forces": None})


def test_audit_lists_every_method_with_totals_agreement_and_the_exact_comparison(audited):
    summary = audited.summary()
    assert list(summary["methods"]) == ["mbe", "gi", "lrp-gamma"]
    for name, m in summary["methods"].items():
        assert set(m["body_order_totals_eV"]) == {"1", "2", "3"} and len(m["truncation_residual_eV"]) == 2
    assert "force_rms_eV_per_A" in summary["methods"]["mbe"]
    pairs = {(a["a"], a["b"], a["order"]) for a in summary["agreement"]}
    assert ("mbe", "gi", 2) in pairs and ("gi", "lrp-gamma", 3) in pairs
    assert set(summary["versus_exact"]) == {"mbe", "gi", "lrp-gamma"}
    assert summary["exact"]["three_body_in_truth"] is True
    json.loads(json.dumps(summary, allow_nan=False))
    assert audited.verdict.endswith(".") and "ε" in audited.verdict


def test_a_decomposition_equal_to_the_exact_terms_scores_zero_error_and_is_trusted(audited, argon_file):
    truth = load_ground_truth(argon_file)
    perfect = exact_copy(audited.explanations["mbe"], truth)
    audit = compare_decompositions({"exact-copy": perfect, "gi": audited.explanations["gi"]}, truth)
    score = audit.physics["exact-copy"]
    assert max(score.pair_curve_rms_over_epsilon.values()) < 1e-12
    assert score.three_body_error < 1e-12 and score.meets_goals
    assert audit.verdict.startswith("Trust exact-copy")


def test_methods_are_matched_term_by_term_so_a_method_agrees_with_itself_exactly(audited):
    gi = audited.explanations["gi"]
    audit = compare_decompositions({"gi": gi, "again": gi})
    for n, agreement in audit.agreement[("gi", "again")].items():
        assert agreement.pearson_r == pytest.approx(1.0) and agreement.mae == 0.0, n


def test_audit_refuses_explanations_of_different_frames(audited):
    mbe = audited.explanations["mbe"]
    shifted = Explanation(**{**mbe.__dict__, "frames": mbe.frames + 1,
                             "tables": {n: Table(**{**t.__dict__, "frame": t.frame + 1}) for n, t in mbe.tables.items()}})
    with pytest.raises(ValueError, match="audit the same frames"):
        compare_decompositions({"mbe": mbe, "shifted": shifted})


def test_report_has_a_faithfulness_section_with_or_without_an_audit(audited, tmp_path):
    with_audit = build_report(audited.explanations["gi"], tmp_path / "a", audit=audited)
    page = with_audit["report"].read_text(encoding="utf-8")
    assert "<h2>Faithfulness</h2>" in page and audited.verdict[:40] in page
    assert "audit_body_order_totals" in with_audit["figures"] and "audit_terms_order3" in with_audit["figures"]
    bare = build_report(audited.explanations["gi"], tmp_path / "b")["report"].read_text(encoding="utf-8")
    assert "Not audited" in bare


def test_cli_audit_writes_every_method_folder_audit_json_and_the_report(argon_file, tmp_path, capsys):
    potential, params = argon_potential("schnet")
    save_checkpoint(tmp_path / "model", potential, params)
    out = tmp_path / "audit"
    assert main(["audit", "--model", str(tmp_path / "model"), "--data", str(argon_file), "--frames", "1",
                 "--rules", "gi", "--order", "2", "--quiet", "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["methods"] == ["mbe", "gi"]
    summary = json.loads((out / "audit.json").read_text())
    assert summary["frames"] == [1] and summary["max_order"] == 2
    for name in ("mbe", "gi"):
        assert Explanation.load(out / name).frames.tolist() == [1]
    assert "Faithfulness" in (out / "report.html").read_text(encoding="utf-8")
    diagnostics = summary["stability_diagnostics"]
    assert set(diagnostics["values"]) == set(DEFINITIONS) == set(result["stability_diagnostics"])
    assert list(diagnostics["species_pairs"]) == ["Ar–Ar"] and diagnostics["rule"] == "gi"
    assert diagnostics["values"]["mbe_inner_well_eV"] >= 0 and diagnostics["values"]["relevance_three_body_share"] is None
    assert "Stability diagnostics" in (out / "report.html").read_text(encoding="utf-8")
    assert (out / "figures" / "audit_dimer_curves.png").is_file()
    assert main(["audit", "--model", str(tmp_path / "model"), "--data", str(argon_file), "--rules", "gi,nonsense",
                 "--quiet", "--out", str(tmp_path / "bad")]) == 2
    assert "nonsense" in capsys.readouterr().err


def test_ensemble_audit_averages_the_seeds_with_spreads_and_scores_each_seed(argon_file, tmp_path, capsys):
    from jaxrel.analysis.faithfulness import run_ensemble_audit
    from jaxrel.checkpoint import save_ensemble

    models = [argon_potential("schnet"), argon_potential("schnet")]
    models[1] = (models[1][0], jax_tree_scale(models[1][1], 1.1))
    frames = read_frames(argon_file).select(np.array([0]))
    truth = load_ground_truth(argon_file)
    audit = run_ensemble_audit(models, [3, 4], frames, truth=truth, rules=("gi",), frame_index=[0])
    single = [run_audit(p, q, frames, rules=("gi",), truth=truth, frame_index=[0]) for p, q in models]
    for name in ("mbe", "gi"):
        for n, table in audit.explanations[name].tables.items():
            members = np.stack([s.explanations[name].tables[n].relevance for s in single])
            np.testing.assert_allclose(table.relevance, members.mean(axis=0), rtol=1e-12, atol=1e-15)
            np.testing.assert_allclose(table.spread, members.std(axis=0, ddof=1), rtol=1e-9, atol=1e-15)
    summary = audit.summary()
    assert summary["seeds"]["seeds"] == [3, 4]
    by_seed = summary["seeds"]["methods"]["mbe"]["versus_exact_by_seed"]["three_body_total_eV"]
    assert by_seed == pytest.approx([s.physics["mbe"].three_body_total for s in single])
    assert "over 2 seeds" in audit.verdict
    for k, (potential, params) in enumerate(models):
        save_checkpoint(tmp_path / f"model_seed{k + 3}", potential, params)
    save_ensemble(tmp_path, ["model_seed3", "model_seed4"], [3, 4])
    assert main(["audit", "--model", str(tmp_path), "--data", str(argon_file), "--frames", "0", "--rules", "gi",
                 "--order", "2", "--quiet", "--out", str(tmp_path / "audit")]) == 0
    assert json.loads(capsys.readouterr().out)["seeds"] == [3, 4]
    loaded = Explanation.load(tmp_path / "audit" / "gi")
    assert loaded.tables[2].spread is not None and loaded.metadata["seeds"] == [3, 4]
    assert "Stability over 2 seeds" in (tmp_path / "audit" / "report.html").read_text(encoding="utf-8")
    spread = json.loads((tmp_path / "audit" / "audit.json").read_text())["stability_diagnostics"]["seed_spread"]
    assert spread["mbe_inner_attraction"] is not None and spread["decay_length_A"] is None
    assert main(["explain", "--model", str(tmp_path), "--data", str(argon_file), "--frames", "0", "--order", "2",
                 "--quiet", "--out", str(tmp_path / "explained")]) == 0
    capsys.readouterr()
    mean = Explanation.load(tmp_path / "explained")
    seeds = [Explanation.load(tmp_path / "explained" / f"seed{s}") for s in (3, 4)]
    np.testing.assert_allclose(mean.tables[2].relevance, (seeds[0].tables[2].relevance + seeds[1].tables[2].relevance) / 2)


def jax_tree_scale(params, factor):
    """The params with every trainable weight scaled (a second, different ensemble member)."""
    import jax
    from flax import nnx

    from jaxrel.models.potential import SpeciesShift
    trainable, constants = nnx.split_state(params, nnx.Param, SpeciesShift)
    return nnx.merge_state(jax.tree.map(lambda x: x * factor, trainable), constants)
