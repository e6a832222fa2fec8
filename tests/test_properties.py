"""Property models: gap readouts (sum, mean, softmax) and the dipole model with latent charges."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrel.graph import build_graphs, pad_graph
from jaxrel.models import ModelConfig, Potential
from jaxrel.nn import resolve_rules
from jaxrel.relevance import enumerate_walks, walk_relevance
from tests.helpers import random_rotation

jax.config.update("jax_enable_x64", True)

# a bent H2O-like and an NH3-like molecule (Å)
WATER = (np.array([8, 1, 1]), np.array([[0.0, 0.0, 0.1], [0.76, 0.0, -0.5], [-0.76, 0.1, -0.45]]))
AMMONIA = (np.array([7, 1, 1, 1]), np.array([[0.0, 0.0, 0.1], [0.94, 0.0, -0.28], [-0.47, 0.81, -0.3],
                                              [-0.45, -0.83, -0.25]]))


def model(target, readout="sum", arch="schnet", shifts=None):
    config = ModelConfig(arch, (1, 7, 8), cutoff=3.0, n_features=8, n_interactions=2, n_rbf=6, dtype="float64",
                         target=target, readout=readout)
    return Potential.create(config, shifts, energy_scale=0.7, seed=3)


def graph_of(molecule, n_atoms=None, n_edges=None):
    species, positions = molecule
    graph = build_graphs(positions, species, 3.0).frame(0)
    return graph if n_atoms is None else pad_graph(graph, n_atoms, n_edges)


@pytest.mark.parametrize("arch", ["schnet", "painn"])
def test_latent_charges_sum_to_zero_exactly_and_padding_changes_nothing(arch):
    potential, params = model("dipole", arch=arch)
    graph = graph_of(AMMONIA)
    q = potential.latent_charges(params, graph)
    assert abs(float(q.sum())) < 1e-15
    assert np.abs(q).max() > 1e-4                                   # not trivially zero
    padded = graph_of(AMMONIA, 7, graph.n_edges + 5)
    np.testing.assert_allclose(potential.latent_charges(params, padded)[:4], q, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(potential.latent_charges(params, padded)[4:], 0.0)
    np.testing.assert_allclose(potential.predict(params, padded), potential.predict(params, graph), atol=1e-14)


@pytest.mark.parametrize("arch", ["schnet", "painn"])
def test_dipole_is_equivariant_and_translation_invariant(arch):
    potential, params = model("dipole", arch=arch)
    species, positions = AMMONIA
    mu = np.asarray(potential.predict(params, graph_of(AMMONIA)))
    rotation = random_rotation(5)
    moved = (species, positions @ rotation.T + np.array([1.0, -2.0, 0.5]))
    np.testing.assert_allclose(potential.predict(params, graph_of(moved)), rotation @ mu, rtol=1e-10, atol=1e-12)


def test_dipole_is_the_sum_of_charges_times_positions():
    potential, params = model("dipole")
    graph = graph_of(WATER)
    q = np.asarray(potential.latent_charges(params, graph))
    expected = (q[:, None] * WATER[1]).sum(0)                      # origin-free since Σ q = 0
    np.testing.assert_allclose(potential.predict(params, graph), expected, rtol=1e-12)
    # the scalar the relevance engine explains is |μ|
    np.testing.assert_allclose(potential.energy(params, graph), np.linalg.norm(expected), rtol=1e-12)


@pytest.mark.parametrize("readout", ["sum", "mean", "softmax"])
def test_gap_readouts_combine_the_atomwise_outputs(readout):
    shifts = {1: 0.3, 7: 0.3, 8: 0.3} if readout != "sum" else {1: 0.1, 7: 0.2, 8: 0.4}
    potential, params = model("gap", readout, shifts=shifts)
    energy_model, _ = Potential.create(ModelConfig("schnet", (1, 7, 8), cutoff=3.0, n_features=8, n_interactions=2,
                                                   n_rbf=6, dtype="float64"), shifts, 0.7, seed=3)
    graph = graph_of(WATER)
    e = np.asarray(energy_model.atomwise_energy(params, graph))     # same params: e_i = scale y_i + e_Z
    y = (e - np.array([shifts[z] for z in WATER[0]])) / 0.7
    w = {"sum": np.ones(3), "mean": np.full(3, 1 / 3), "softmax": np.exp(y) / np.exp(y).sum()}[readout]
    np.testing.assert_allclose(potential.predict(params, graph), (w * e).sum(), rtol=1e-12)
    padded = graph_of(WATER, 6, graph.n_edges + 4)
    np.testing.assert_allclose(potential.predict(params, padded), (w * e).sum(), rtol=1e-12)
    assert potential.shift_total(params, WATER[0]) == pytest.approx(0.6 if readout == "sum" else 0.3)   # O + 2 H


def test_softmax_weights_are_frozen_for_relevance_but_not_for_training():
    potential, params = model("gap", "softmax", shifts={1: 0.3, 7: 0.3, 8: 0.3})
    graph = graph_of(AMMONIA)
    h0 = potential.embedding(params, graph)
    values = {r: potential.atomwise_energy_from_embedding(params, h0, graph, r) for r in ("identity", "gi")}
    np.testing.assert_allclose(values["gi"], values["identity"], rtol=1e-13)      # forward value unchanged
    grads = {r: jax.grad(lambda h: potential.atomwise_energy_from_embedding(params, h, graph, r).sum())(h0)
             for r in ("identity", "gi")}
    assert not np.allclose(grads["identity"], grads["gi"])
    # under GI the weights are constants: the gradient is that of Σ_i w_i e_i with w held fixed
    logits = potential.module(params).network_output(graph, resolve_rules("identity"))
    w = jax.nn.softmax(logits)
    sum_model, _ = model("gap", "sum", shifts={1: 0.3, 7: 0.3, 8: 0.3})   # same params, sum readout
    frozen = jax.grad(lambda h: jnp.sum(w * sum_model.atomwise_energy_from_embedding(params, h, graph, "gi")))(h0)
    np.testing.assert_allclose(grads["gi"], frozen, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("target,readout", [("gap", "mean"), ("gap", "softmax"), ("dipole", "sum")])
def test_walk_relevances_of_a_property_model_sum_to_gradient_times_input(target, readout):
    potential, params = model(target, readout, shifts={1: 0.3, 7: 0.3, 8: 0.3} if target == "gap" else None)
    graph = graph_of(WATER)
    walks = enumerate_walks(graph, potential.config.n_interactions)
    relevance = walk_relevance(potential, params, graph, walks, "gi")
    h0 = potential.embedding(params, graph)
    grad = jax.grad(lambda h: potential.atomwise_energy_from_embedding(params, h, graph, "gi").sum())(h0)
    np.testing.assert_allclose(relevance.sum(), float(jnp.sum(grad * h0)), rtol=1e-10)


@pytest.mark.parametrize("kwargs,message", [
    (dict(target="dipole", readout="mean"), "dipole model has its own readout"),
    (dict(target="charge"), "target \\(--target\\) is 'charge'"),
    (dict(readout="max"), "readout \\(--readout\\) is 'max'"),
    (dict(target="gap", prior="repulsive"), "takes none"),
])
def test_bad_property_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig("schnet", (1, 8), **kwargs)


def test_latent_charges_of_an_energy_model_are_refused():
    potential, params = model("energy")
    with pytest.raises(ValueError, match="latent charges belong to dipole models"):
        potential.latent_charges(params, graph_of(WATER))


def test_md_and_the_calculator_refuse_a_gap_model():
    from jaxrel.calculator import JaxrelCalculator
    from jaxrel.md import simulate

    potential, params = model("gap", "mean", shifts={1: 0.3, 7: 0.3, 8: 0.3})
    with pytest.raises(ValueError, match="molecular dynamics needs a model of the energy"):
        simulate(potential, params, WATER[1], WATER[0])
    with pytest.raises(ValueError, match="an ASE calculator needs a model of the energy"):
        JaxrelCalculator(potential, params)


def test_relevance_locality_counts_the_atoms_that_carry_the_share():
    from jaxrel.analysis import relevance_locality

    assert relevance_locality(np.ones(10)) == 9                    # 9 of 10 equal atoms hold 90 %
    assert relevance_locality([5.0, -4.0, 0.5, 0.5]) == 2          # signs do not cancel: |R_i|
    assert relevance_locality([9.0, 1.0]) == 1                     # exactly 90 % counts
    assert relevance_locality(np.ones(10), fraction=1.0) == 10
    with pytest.raises(ValueError, match="not all 0"):
        relevance_locality(np.zeros(3))
    with pytest.raises(ValueError, match="fraction is 0"):
        relevance_locality(np.ones(3), fraction=0)


def test_per_species_agreement_compares_each_element_apart():
    from jaxrel.analysis import per_species_agreement

    species = np.array([1, 1, 1, 8, 8, 8, 6])
    reference = np.array([0.1, 0.2, 0.3, -0.5, -0.6, -0.7, 0.0])
    predicted = np.array([0.2, 0.4, 0.6, -0.7, -0.6, -0.5, 0.1])   # H: r = +1 (slope 2); O: r = −1
    result = per_species_agreement(predicted, reference, species)
    assert set(result) == {1, 8}                                   # one carbon: no correlation
    assert result[1].pearson_r == pytest.approx(1.0) and result[1].slope == pytest.approx(2.0)
    assert result[8].pearson_r == pytest.approx(-1.0)
    assert result[1].mae == pytest.approx(0.2)


@pytest.fixture(scope="module")
def xtb_file(tmp_path_factory):
    from jaxrel.data import generate_xtb, save_xtb

    path = tmp_path_factory.mktemp("xtb") / "small.npz"
    save_xtb(generate_xtb(["H2O", "NH3", "CH4", "HCN", "CH3OH"], frames_per_molecule=6, temperature=600.0,
                          progress=False), path)
    return path


@pytest.mark.parametrize("target,readout", [("gap", "mean"), ("energy", "sum")])   # dipole: the CLI test
def test_property_models_train_on_several_molecules_and_reload(tmp_path, xtb_file, target, readout):
    from jaxrel.checkpoint import load_checkpoint
    from jaxrel.data import read_molecules
    from jaxrel.train import labelled_graphs, train_potential

    metrics = train_potential(xtb_file, tmp_path / "run", model="schnet", cutoff=3.0, n_features=8,
                              n_interactions=1, n_rbf=6, epochs=2, batch_size=4, target=target,
                              readout=readout, n_validation=3, progress=False)
    key = {"gap": "gap_mae_eV", "dipole": "dipole_mae_D", "energy": "energy_mae_meV"}[target]
    assert np.isfinite(metrics["test"][key]) and metrics["n_frames"] == {"train": 24, "validation": 3, "test": 3}
    potential, params, _ = load_checkpoint(tmp_path / "run" / "model")
    assert (potential.config.target, potential.config.readout) == (target, readout)
    assert potential.config.species == (1, 6, 7, 8)
    # one padded size class for five compositions; the prediction of a padded frame is its own
    molecules = read_molecules(xtb_file)
    graph, targets = labelled_graphs(molecules, 3.0, "float32", target=target)
    assert graph.positions.shape[:2] == (30, 6)
    alone = potential.predict(params, labelled_graphs(molecules[1], 3.0, "float32", target=target)[0])
    np.testing.assert_allclose(potential.predict(params, graph)[6:12], alone, rtol=1e-5, atol=1e-6)
    if target == "energy":
        np.testing.assert_array_equal(targets.forces[6:12, 4:], 0.0)      # NH3 padded from 4 to 6 atoms
        from jaxrel.md import MDState, run_md

        report = run_md(tmp_path / "run" / "model", xtb_file, tmp_path / "md", molecule="NH3", time_ps=0.005,
                        dt_fs=0.5, log_every=5, progress=False)
        assert report["simulated_time_ps"] > 0
        assert MDState.load(tmp_path / "md" / "restart.npz")[1]["settings"]["molecule"] == "NH3"


def test_gap_training_needs_gap_labels(tmp_path, dimers):
    from jaxrel.train import train_potential

    with pytest.raises(ValueError, match="has no gaps but --target gap"):
        train_potential(dimers, tmp_path / "run", target="gap", readout="mean", epochs=1, progress=False)


def test_chemical_insight_of_several_molecules(tmp_path, xtb_file):
    from jaxrel.analysis.chemistry import chemical_insight, start_atom_relevance, write_chemical_insight
    from jaxrel.data import read_molecules

    molecules = read_molecules(xtb_file)
    potential, params = Potential.create(ModelConfig("schnet", (1, 6, 7, 8), cutoff=3.0, n_features=8,
                                                     n_interactions=2, n_rbf=6, dtype="float64", target="dipole"),
                                         None, 0.7, seed=3)
    insight = chemical_insight(potential, params, molecules)
    assert len(insight.n_atoms) == 30 and insight.species.shape == insight.values.shape == insight.reference.shape
    # latent charges: Σ q = 0 in every frame; every element with charges is compared
    for k, start in enumerate(np.cumsum([0, *insight.n_atoms[:-1]])):
        assert abs(insight.values[start:start + insight.n_atoms[k]].sum()) < 1e-12
    assert set(insight.charges) == {1, 6, 7, 8}
    # the relevance of the walks that start at each atom sums to that of all walks (brute force)
    graph = build_graphs(molecules[4].positions[:1], molecules[4].species, 3.0).frame(0)
    walks = enumerate_walks(graph, 2)
    by_start = np.bincount(walks[:, 0], walk_relevance(potential, params, graph, walks), graph.n_atoms)
    np.testing.assert_allclose(start_atom_relevance(potential, params, graph), by_start, rtol=1e-10, atol=1e-13)
    # padding to the largest molecule changes nothing
    alone = chemical_insight(potential, params, molecules[0])
    np.testing.assert_array_equal(alone.atoms_for_share, insight.atoms_for_share[:6])
    np.testing.assert_allclose(alone.values, insight.values[:18], atol=1e-13)
    paths = write_chemical_insight(insight, tmp_path)
    assert sorted(paths) == ["charges", "json", "locality"] and all(p.stat().st_size > 0 for p in paths.values())


def test_cli_explains_one_molecule_and_reports_its_chemistry(tmp_path, xtb_file):
    from jaxrel.cli import main

    assert main(["train", "--data", str(xtb_file), "--out", str(tmp_path / "run"), "--target", "dipole",
                 "--cutoff", "3", "--features", "8", "--interactions", "1", "--rbf", "6", "--epochs", "1",
                 "--batch-size", "4", "--validation", "3", "--quiet"]) == 0
    model_dir = str(tmp_path / "run" / "model")
    assert main(["evaluate", "--model", model_dir, "--data", str(xtb_file)]) == 0
    assert main(["explain", "--model", model_dir, "--data", str(xtb_file), "--molecule", "CH3OH", "--frames", "0:2",
                 "--order", "2", "--out", str(tmp_path / "explained"), "--quiet"]) == 0
    assert main(["report", "--explained", str(tmp_path / "explained"), "--model", model_dir]) == 0
    page = (tmp_path / "explained" / "report.html").read_text()
    assert "<h2>Chemistry</h2>" in page and "latent charge q_i (e) against the reference partial charges" in page
    assert (tmp_path / "explained" / "figures" / "chemistry.json").is_file()
    assert main(["explain", "--model", model_dir, "--data", str(xtb_file), "--out", str(tmp_path / "all")]) == 2


def test_chemical_insight_leaves_out_frames_without_relevance():
    from jaxrel.analysis.chemistry import chemical_insight
    from jaxrel.data import Frames

    potential, params = model("dipole")
    # H2: both atoms alike, so both latent charges, μ and every relevance are exactly 0
    h2 = Frames(species=[1, 1], positions=[[[0, 0, 0], [0, 0, 0.74]]], energies=None, forces=None, cell=None,
                source="H2")
    water = Frames(species=WATER[0], positions=WATER[1][None], energies=None, forces=None, cell=None, source="w")
    insight = chemical_insight(potential, params, [h2, water])
    assert insight.has_relevance.tolist() == [False, True] and insight.share_of_atoms.shape == (1,)
    assert insight.summary()["locality"]["n_frames_without_relevance"] == 1


def test_md_of_a_gap_model_is_refused_before_the_output_folder_is_touched(tmp_path):
    from jaxrel.checkpoint import save_checkpoint
    from jaxrel.md import run_md

    potential, params = model("gap", "mean", shifts={1: 0.3, 7: 0.3, 8: 0.3})
    save_checkpoint(tmp_path / "model", potential, params)
    out = tmp_path / "md"
    out.mkdir()
    (out / "stability.json").write_text("{}")                      # an earlier run
    with pytest.raises(ValueError, match="molecular dynamics needs a model of the energy"):
        run_md(tmp_path / "model", tmp_path / "data.npz", out, overwrite=True)
    assert (out / "stability.json").read_text() == "{}"
