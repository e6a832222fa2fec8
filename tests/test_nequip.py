"""The NequIP-style e3nn-jax model: irreps features rotate with Wigner-D matrices, every rule
keeps the forward value, walk relevances are rotation/translation/permutation invariant under
every rule (the l > 0 channels carry relevance), configuration and checkpoints. float64.

Physics and exactness shared with SchNet and PaiNN (invariance, Σ F = 0, smooth cutoff,
padding, jit, brute-force walks and n-body terms, Σ R = E) run in test_models.py and
test_relevance.py, whose MODELS include "nequip".
"""

from dataclasses import dataclass

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import assert_relevance_invariant, random_rotation
from jaxrel.checkpoint import load_checkpoint, save_checkpoint
from jaxrel.graph import build_graphs
from jaxrel.models import ModelConfig, Potential
from jaxrel.models.nequip import node_irreps
from jaxrel.nn import RULE_NAMES, RuleSet
from jaxrel.relevance import enumerate_walks, walk_relevance

SPECIES = np.array([6, 6, 8, 1, 1, 1, 1, 1, 1])
CUTOFF = 2.6


def molecule(seed=0):
    return np.random.default_rng(seed).uniform(0, 3.0, size=(len(SPECIES), 3))


def make(lmax=1, features=(8, 4), n_interactions=2, seed=1):
    config = ModelConfig("nequip", (1, 6, 8), cutoff=CUTOFF, n_features=features[0], n_interactions=n_interactions,
                         n_rbf=6, dtype="float64", lmax=lmax, features_per_l=features)
    return Potential.create(config, {1: -0.5, 6: -37.8, 8: -75.0}, energy_scale=0.3, seed=seed)


def inner_features(pot, params, positions):
    g = build_graphs(positions, SPECIES, CUTOFF).frame(0)
    layers, _ = pot.layer_functions(params, g)
    return layers[0](pot.embedding(params, g))


def test_inner_irreps_features_rotate_with_wigner_d_matrices():
    pot, params = make(lmax=2, features=(8, 6, 4))
    irreps = node_irreps(pot.config.features_per_l)
    pos, rot = molecule(), random_rotation(7)
    h = inner_features(pot, params, pos)
    h_rot = inner_features(pot, params, pos @ rot.T)
    assert h.shape == (len(SPECIES), irreps.dim)
    expected = e3nn.IrrepsArray(irreps, h).transform_by_matrix(rot).array
    np.testing.assert_allclose(h_rot, expected, atol=1e-11)
    vectors = e3nn.IrrepsArray(irreps, h).filter(drop="0e").array
    assert np.abs(vectors).max() > 1e-3  # the l > 0 channels are populated


@pytest.mark.parametrize("model", ["schnet", "painn", "nequip"])
def test_every_rule_keeps_the_forward_value(model):
    config = ModelConfig(model, (1, 6, 8), cutoff=CUTOFF, n_features=8, n_interactions=2, n_rbf=6,
                         dtype="float64")
    pot, params = Potential.create(config, {1: -0.5, 6: -37.8, 8: -75.0}, energy_scale=0.3, seed=1)
    g = build_graphs(molecule(), SPECIES, CUTOFF).frame(0)
    plain = pot.atomwise_energy(params, g)
    h0 = pot.embedding(params, g)
    gradients = {}
    for rule in [*RULE_NAMES, RuleSet("lrp-gamma", gamma=(1.0, 0.1, 0.0))]:
        np.testing.assert_allclose(pot.atomwise_energy(params, g, rule), plain, rtol=1e-13, atol=1e-13)
        gradients[str(rule)] = jax.grad(lambda h: pot.atomwise_energy_from_embedding(params, h, g, rule).sum())(h0)
    values = list(gradients.values())
    assert all(np.abs(a - b).max() > 1e-8 for i, a in enumerate(values) for b in values[i + 1:])  # rules differ


@pytest.mark.parametrize("rules", ["gi", "lrp-eps", "lrp-gamma"])
def test_walk_relevances_are_invariant_under_rotation_translation_and_permutation(rules):
    pot, params = make()
    g = build_graphs(molecule(), SPECIES, CUTOFF).frame(0)
    assert_relevance_invariant(pot, params, g, rules, seed=2)


def test_l_above_zero_channels_carry_relevance():
    """Walk relevances change when the l > 0 paths are cut (the published SO3net code detaches them)."""
    pot, params = make(n_interactions=2)
    g = build_graphs(molecule(), SPECIES, CUTOFF).frame(0)
    walks = enumerate_walks(g, 2)
    full = walk_relevance(pot, params, g, walks)
    scalar_only = jax.tree.map(lambda x: x, params)
    for weights in (scalar_only["net"]["interactions"][0]["down"]["weights"],):
        for k in list(weights.keys())[1:]:  # the l = 1 block of the first layer's output
            weights[k][...] = jnp.zeros_like(weights[k][...])
    cut = walk_relevance(pot, scalar_only, g, walks)
    assert np.abs(full - cut).max() > 1e-3 * np.abs(full).max()


@dataclass(frozen=True)
class FieldInLayerOne:
    """A model whose first layer scales each atom's features by 1 + 0.2 x_atom: not invariant."""

    potential: Potential

    @property
    def config(self):
        return self.potential.config

    def embedding(self, params, graph):
        return self.potential.embedding(params, graph)

    def message_functions(self, params, graph, rules):
        splits, readout = self.potential.message_functions(params, graph, rules)
        (pre, post), field = splits[0], 1.0 + 0.2 * graph.positions[:, :1]
        return [(pre, lambda h, x: post(h, x) * field), *splits[1:]], readout

    def atomwise_energy_from_embedding(self, params, h0, graph, rules):
        splits, readout = self.message_functions(params, graph, rules)
        h = h0
        for pre, post in splits:
            h = post(h, pre(h)[graph.senders])
        return readout(h)


def test_relevance_assertion_fails_on_a_model_that_is_not_invariant():
    pot, params = make()
    g = build_graphs(molecule(), SPECIES, CUTOFF).frame(0)
    with pytest.raises(AssertionError, match="rotation \\+ translation"):
        assert_relevance_invariant(FieldInLayerOne(pot), params, g, "gi")


@pytest.mark.parametrize("kw, message", [
    (dict(model="schnet", lmax=2), "apply only to nequip"),
    (dict(model="painn", features_per_l=(8, 8)), "apply only to nequip"),
    (dict(model="nequip", lmax=2, features_per_l=(8, 4)), "one multiplicity ≥ 1 per l"),
    (dict(model="nequip", features_per_l=(6, 4)), "F_0 = n_features = 8"),
    (dict(model="nequip", lmax=-1), r"lmax \(--lmax\) is -1"),
])
def test_bad_irreps_settings_raise_a_clear_error(kw, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(species=(1,), n_features=8, **kw)


def test_config_defaults_and_checkpoint_round_trip(tmp_path):
    assert ModelConfig("nequip", (1,), n_features=8).features_per_l == (8, 8)  # lmax 1
    assert ModelConfig("nequip", (1,), n_features=8, features_per_l=(8, 4, 2)).lmax == 2
    assert ModelConfig("schnet", (1,)).to_dict()["lmax"] is None
    pot, params = make()
    save_checkpoint(tmp_path / "model", pot, params)
    loaded, loaded_params, _ = load_checkpoint(tmp_path / "model")
    assert loaded.config == pot.config
    g = build_graphs(molecule(), SPECIES, CUTOFF).frame(0)
    np.testing.assert_array_equal(loaded.energy(loaded_params, g), pot.energy(params, g))


def test_train_evaluate_explain_and_md_commands_work_with_nequip(tmp_path, capsys):
    from helpers import morse_dimers
    from jaxrel.cli import main

    data = morse_dimers(tmp_path / "morse.extxyz", n_frames=12)
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--model", "nequip", "--features", "8,4", "--cutoff", "3",
                 "--interactions", "1", "--rbf", "6", "--epochs", "2", "--batch-size", "4", "--quiet",
                 "--out", str(out)]) == 0
    loaded, _, _ = load_checkpoint(out / "model")
    assert (loaded.config.model, loaded.config.lmax, loaded.config.features_per_l) == ("nequip", 1, (8, 4))
    capsys.readouterr()
    assert main(["evaluate", "--model", str(out / "model"), "--data", str(data)]) == 0
    assert main(["explain", "--model", str(out / "model"), "--data", str(data), "--frames", "0:1", "--order", "2",
                 "--quiet", "--out", str(tmp_path / "explained")]) == 0
    assert main(["md", "--model", str(out / "model"), "--data", str(data), "--frame", "0", "--ensemble",
                 "nvt-langevin", "--temperature", "300", "--dt", "0.5", "--time", "0.01", "--quiet",
                 "--out", str(tmp_path / "md")]) == 0
    assert (tmp_path / "md" / "stability.json").is_file()
    assert main(["train", "--data", str(data), "--model", "schnet", "--lmax", "2", "--epochs", "1",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "apply only to nequip" in capsys.readouterr().err
