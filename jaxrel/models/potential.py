"""A trained potential as pure functions of ``(params, graph)``.

One Flax NNX module definition serves training, forces, JAX-MD and relevance: it is
split once with ``nnx.split`` into a static ``graphdef`` (held by :class:`Potential`)
and ``params`` (an ``nnx.State`` pytree), and merged again inside each pure function,
so every method composes with ``jax.jit``, ``jax.vmap`` and ``jax.grad``.

Energies are atomwise: E = Σ_i E_i with E_i = scale · y_i + e_{Z_i}, where y_i is the
network's per-atom output and e_Z are per-species energy shifts fitted by least squares
(Schütt et al., arXiv:1806.10349). Units: Å, eV, eV/Å.

Architectures: the message-passing SchNet, PaiNN and NequIP (e3nn-jax), whose forward pass splits into layers
for the GNN-LRP relevance engine (:meth:`Potential.embedding`, :meth:`Potential.layer_functions`),
and the explicitly body-ordered model (:mod:`jaxrel.models.bodyordered`), which has no
layers and gives its atomwise output directly.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrel.graph import Graph, check_positions, edge_lengths
from jaxrel.models.bodyordered import BodyOrdered
from jaxrel.models.nequip import NequIP
from jaxrel.models.painn import PaiNN
from jaxrel.models.prior import PRIORS, repulsive_energy
from jaxrel.models.schnet import SchNet
from jaxrel.nn import RuleSet, resolve_rules

ARCHITECTURES = {"schnet": SchNet, "painn": PaiNN, "nequip": NequIP, "bodyordered": BodyOrdered}
TARGETS = ("energy", "gap", "dipole")
"""What a model predicts: the total energy (eV), the HOMO–LUMO gap (eV) or the dipole moment (e·Å)."""
READOUTS = ("sum", "mean", "softmax")
"""How atomwise outputs become one prediction (:class:`ModelConfig`)."""
EQUIVARIANT = ("nequip",)  # architectures with irreps features (``lmax``, ``features_per_l``)


def has_layers(net) -> bool:
    """True for message-passing nets (SchNet, PaiNN, NequIP; a class or an instance), whose forward pass
    splits into layers; False for the body-ordered model."""
    return hasattr(net, "message_functions")


def compose_layer(pre, post, graph: Graph):
    """The layer h ↦ post(h, pre(h)[senders]) of a message-passing split (every leaf gathered)."""
    return lambda h: post(h, jax.tree.map(lambda x: x[graph.senders], pre(h)))

NO_LAYERS = ("the body-ordered model has no message-passing layers for GNN-LRP: its energy is an "
             "explicit sum of 2- and 3-body terms")


@dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of a potential (stored in every checkpoint).

    Attributes:
        model: ``"schnet"``, ``"painn"``, ``"nequip"`` or ``"bodyordered"``.
        species: atomic numbers (or CG bead ids ≥ 1) the model knows, sorted.
        cutoff: neighbour cutoff r_c, Å.
        n_features: feature width F.
        n_interactions: number of message-passing layers T (≥ 1). The body-ordered model
            has none; it accepts any value and stores 1.
        n_rbf: number of radial basis functions.
        dtype: ``"float32"`` or ``"float64"`` parameters.
        lmax: NequIP only: the largest rotation order L of features and spherical harmonics
            (default 1); None for the other models.
        features_per_l: NequIP only: channel multiplicities (F_0, …, F_L), F_0 = n_features
            (default F_0 for every l); None for the other models.
        prior: a fixed pair term added to the network's energy, ``"repulsive"``
            (:mod:`jaxrel.models.prior`, for coarse-grained force matching), or None.
        target: what the model predicts, one of :data:`TARGETS`: ``"energy"`` (eV; forces are
            its negative gradient), ``"gap"`` (HOMO–LUMO gap, eV) or ``"dipole"`` (e·Å, from
            latent atomic charges; :class:`EnergyModel`).
        readout: how atomwise outputs e_i = scale · y_i + e_{Z_i} combine, one of
            :data:`READOUTS`: ``"sum"`` Σ_i e_i (extensive), ``"mean"`` (1/N) Σ_i e_i
            (intensive) or ``"softmax"`` Σ_i w_i e_i with w = softmax(y) over the atoms
            (intensive, a smooth maximum). Esders et al. 2025 (arXiv:2410.13833) compare
            such readouts for intensive and extensive properties. A dipole model has its own
            readout (Σ_i q_i r_i) and takes ``"sum"``.
    """

    model: str
    species: tuple[int, ...]
    cutoff: float = 5.0
    n_features: int = 64
    n_interactions: int = 3
    n_rbf: int = 20
    dtype: str = "float32"
    lmax: int | None = None
    features_per_l: tuple[int, ...] | None = None
    prior: str | None = None
    target: str = "energy"
    readout: str = "sum"

    def __post_init__(self):
        if self.target not in TARGETS:
            raise ValueError(f"target (--target) is {self.target!r}; use one of {', '.join(TARGETS)}")
        if self.readout not in READOUTS:
            raise ValueError(f"readout (--readout) is {self.readout!r}; use one of {', '.join(READOUTS)}")
        if self.target == "dipole" and self.readout != "sum":
            raise ValueError(f"readout (--readout) is {self.readout!r} but a dipole model has its own readout "
                             "(Σ_i q_i r_i of latent charges); leave --readout at sum")
        if self.prior is not None and self.target != "energy":
            raise ValueError(f"prior (--prior) {self.prior!r} is an energy term; a {self.target} model takes none")
        if self.model == "bodyordered" and self.target != "energy":
            raise ValueError(f"the body-ordered model predicts energies only, not {self.target}; use schnet, "
                             "painn or nequip for --target " + self.target)
        if self.prior is not None and self.prior not in PRIORS:
            raise ValueError(f"prior (--prior) is {self.prior!r}; use one of {', '.join(PRIORS)} or none")
        if self.model not in ARCHITECTURES:
            raise ValueError(f"unknown model {self.model!r}; known: {sorted(ARCHITECTURES)}")
        if not self.species or min(self.species) < 1:
            raise ValueError(f"species must be positive atomic numbers, got {self.species}")
        object.__setattr__(self, "species", tuple(sorted(int(z) for z in self.species)))
        if self.model == "bodyordered" and self.n_interactions >= 1:
            object.__setattr__(self, "n_interactions", 1)
        checks = (("cutoff", "--cutoff", math.isfinite(self.cutoff) and self.cutoff > 0, "a positive number of Å"),
                  ("n_features", "--features", self.n_features >= 2, "at least 2"),
                  ("n_interactions", "--interactions", self.n_interactions >= 1, "at least 1"),
                  ("n_rbf", "--rbf", self.n_rbf >= 2, "at least 2"))
        for name, option, ok, need in checks:
            if not ok:
                raise ValueError(f"{name} ({option}) is {getattr(self, name)}; it must be {need}")
        self._check_irreps()

    def _check_irreps(self) -> None:
        if self.model not in EQUIVARIANT:
            if self.lmax is not None or self.features_per_l is not None:
                raise ValueError(f"lmax and features_per_l (--lmax, several --features values) apply only to "
                                 f"{', '.join(EQUIVARIANT)}, not to {self.model}: leave them unset")
            return
        default_lmax = 1 if self.features_per_l is None else len(self.features_per_l) - 1
        lmax = default_lmax if self.lmax is None else int(self.lmax)
        if lmax < 0:
            raise ValueError(f"lmax (--lmax) is {lmax}; it must be 0 or more")
        features = tuple(int(f) for f in (self.features_per_l or (self.n_features,) * (lmax + 1)))
        if lmax < 0 or len(features) != lmax + 1 or min(features) < 1 or features[0] != self.n_features:
            raise ValueError(f"features_per_l {features} must give one multiplicity ≥ 1 per l = 0..lmax "
                             f"(lmax {lmax}) with F_0 = n_features = {self.n_features}")
        object.__setattr__(self, "lmax", lmax)
        object.__setattr__(self, "features_per_l", features)

    def architecture_options(self) -> dict:
        """Keyword arguments of the architecture beyond the common ones (NequIP: lmax, features_per_l)."""
        return {"lmax": self.lmax, "features_per_l": self.features_per_l} if self.model in EQUIVARIANT else {}

    def to_dict(self) -> dict:
        """The config as JSON types (species a list), as stored in checkpoints and explanations."""
        d = {**dataclasses.asdict(self), "species": list(self.species)}
        if self.features_per_l is not None:
            d["features_per_l"] = list(self.features_per_l)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        features = d.get("features_per_l")
        return cls(**{**d, "species": tuple(d["species"]),
                      "features_per_l": None if features is None else tuple(features)})


class SpeciesShift(nnx.Variable):
    """Fixed (not trained) constants: per-species energy shifts and the energy scale, eV, and the
    prior's σ (Å) and ε (eV) per species pair."""


def species_lookup(species_list: tuple[int, ...], species: jax.Array) -> jax.Array:
    """Index of each atomic number in ``species_list`` (padding Z = 0 maps to 0).

    Unknown species must be rejected before this point (``Potential.check_graph``).
    """
    table = jnp.zeros(max(species_list) + 1, jnp.int32).at[jnp.asarray(species_list)].set(
        jnp.arange(len(species_list), dtype=jnp.int32))
    return table[jnp.clip(species, 0, max(species_list))]


class EnergyModel(nnx.Module):
    """The network plus fixed per-species shifts, the output scale and the readout.

    A message-passing net (SchNet, PaiNN, NequIP) provides ``embed`` and ``message_functions``; a net
    without layers (the body-ordered model) provides ``atomwise_output(graph,
    species_index)`` instead, and the layer methods raise ``ValueError``.

    Every target is written as atomwise contributions c_i whose sum over the real atoms is the
    prediction, so the relevance engine explains every target the same way. With network outputs
    y_i, e_i = scale · y_i + e_{Z_i} and N real atoms:

    * energy or gap, readout ``sum``: c_i = e_i; ``mean``: c_i = e_i / N; ``softmax``:
      c_i = w_i e_i with w = softmax_i(y_i). Under a relevance rule (anything but
      ``"identity"``) the weights w are frozen (stop-gradient), so relevance flows through
      the e_i only, as gates are treated elsewhere (Schnake et al., arXiv:2006.03589).
    * dipole: latent charges q_i = scale · y_i − (1/N) Σ_j scale · y_j, so Σ_i q_i = 0 (a
      neutral molecule) exactly; μ = Σ_i q_i (r_i − r̄) with r̄ the centroid of the atoms
      (origin-free because Σ q_i = 0; Schütt et al. 2018, arXiv:1806.10349, and the charge
      models of PhysNet, Unke & Meuwly 2019, arXiv:1902.08408). The scalar the engine explains
      is ``‖μ‖ = Σ_i c_i`` with c_i = μ̂ · q_i (r_i − r̄), μ̂ = μ/‖μ‖ frozen (this leaves ∂‖μ‖ unchanged).
    """

    def __init__(self, config: ModelConfig, species_energies: dict[int, float] | None,
                 energy_scale: float, prior: tuple | None = None, *, rngs: nnx.Rngs):
        dtype = jnp.dtype(config.dtype)
        self.species = config.species
        self.cutoff = config.cutoff
        self.net = ARCHITECTURES[config.model](
            len(config.species), config.cutoff, config.n_features, config.n_interactions,
            config.n_rbf, **config.architecture_options(), rngs=rngs, param_dtype=dtype)
        shifts = [float((species_energies or {}).get(z, 0.0)) for z in config.species]
        self.shifts = SpeciesShift(jnp.asarray(shifts, dtype))
        self.scale = SpeciesShift(jnp.asarray(energy_scale, dtype))
        self.has_prior = config.prior is not None
        self.target, self.readout = config.target, config.readout
        if self.has_prior:
            n = len(config.species)
            sigma, epsilon = prior if prior is not None else (np.ones((n, n)), np.zeros((n, n)))
            self.prior_sigma = SpeciesShift(jnp.asarray(sigma, dtype))
            self.prior_epsilon = SpeciesShift(jnp.asarray(epsilon, dtype))

    def _check_layers(self) -> None:
        if not has_layers(self.net):
            raise ValueError(NO_LAYERS)

    def _energy(self, graph: Graph, y: jax.Array, rules: RuleSet) -> jax.Array:
        """Atomwise contributions c_i (class docstring; with a prior + ½ Σ_j φ(r_ij)), 0 for padded
        atoms: eV for energy and gap, e·Å for the dipole's |μ|."""
        if self.target == "dipole":
            return self._dipole_contributions(graph, y)
        idx = species_lookup(self.species, graph.species)
        energy = self.scale[...] * y + self.shifts[...][idx]
        if self.has_prior:
            energy = energy + self.prior_atomwise(graph)
        if self.readout == "mean":
            energy = energy / jnp.maximum(graph.node_mask.sum(), 1)
        elif self.readout == "softmax":
            weights = jax.nn.softmax(jnp.where(graph.node_mask, y, -jnp.inf))
            energy = energy * (weights if rules.name == "identity" else jax.lax.stop_gradient(weights))
        return jnp.where(graph.node_mask, energy, 0.0)

    def latent_charges(self, graph: Graph, y: jax.Array) -> jax.Array:
        """q_i = scale · y_i − mean_j(scale · y_j) over real atoms (e); Σ q_i = 0; 0 for padded atoms."""
        q = jnp.where(graph.node_mask, self.scale[...] * y, 0.0)
        q = q - q.sum() / jnp.maximum(graph.node_mask.sum(), 1)
        return jnp.where(graph.node_mask, q, 0.0)

    def dipole(self, graph: Graph, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(μ (3,) e·Å, q_i (r_i − r̄) (n_atoms, 3)) of one frame from network outputs y."""
        mask = graph.node_mask[:, None]
        centre = jnp.sum(jnp.where(mask, graph.positions, 0.0), 0) / jnp.maximum(graph.node_mask.sum(), 1)
        moments = jnp.where(mask, self.latent_charges(graph, y)[:, None] * (graph.positions - centre), 0.0)
        return moments.sum(0), moments

    def _dipole_contributions(self, graph: Graph, y: jax.Array) -> jax.Array:
        mu, moments = self.dipole(graph, y)
        norm = jnp.sqrt(jnp.sum(mu * mu) + jnp.finfo(mu.dtype).tiny)
        return moments @ jax.lax.stop_gradient(mu / norm)

    def prior_atomwise(self, graph: Graph) -> jax.Array:
        """½ Σ_j φ(r_ij) of each atom of one frame (n_atoms,) eV: the prior split evenly over each pair."""
        idx = species_lookup(self.species, graph.species)
        _, r = edge_lengths(graph)
        a, b = idx[graph.receivers], idx[graph.senders]
        phi = repulsive_energy(r, self.prior_sigma[...][a, b], self.prior_epsilon[...][a, b], self.cutoff)
        return 0.5 * jax.ops.segment_sum(jnp.where(graph.edge_mask, phi, 0.0), graph.receivers,
                                         num_segments=graph.positions.shape[0])

    def prior_pair_energy(self, distances: jax.Array, species: jax.Array) -> jax.Array:
        """φ_ab(r) of pairs: distances (m,) Å, species (m, 2) → (m,) eV; zeros without a prior."""
        if not self.has_prior:
            return jnp.zeros(distances.shape, distances.dtype)
        a, b = (species_lookup(self.species, species[:, k]) for k in (0, 1))
        return repulsive_energy(distances, self.prior_sigma[...][a, b], self.prior_epsilon[...][a, b], self.cutoff)

    def embed(self, graph: Graph) -> jax.Array:
        self._check_layers()
        return self.net.embed(species_lookup(self.species, graph.species))

    def message_functions(self, graph: Graph, rules: RuleSet):
        """``(splits, energy_readout)``: per-layer ``(pre, post)`` pairs and h⁽ᵀ⁾ ↦ atomwise energies (eV)."""
        self._check_layers()
        splits, readout = self.net.message_functions(graph, rules)
        return splits, lambda h: self._energy(graph, readout(h), rules)

    def layer_functions(self, graph: Graph, rules: RuleSet):
        """``(layers, energy_readout)``: per-layer maps and h⁽ᵀ⁾ ↦ atomwise energies (eV)."""
        splits, readout = self.message_functions(graph, rules)
        return [compose_layer(pre, post, graph) for pre, post in splits], readout

    def _output_from_embedding(self, h0, graph: Graph, rules: RuleSet) -> jax.Array:
        self._check_layers()
        splits, readout = self.net.message_functions(graph, rules)
        layers = [compose_layer(pre, post, graph) for pre, post in splits]
        h = h0
        for layer in layers:
            h = layer(h)
        return readout(h)

    def network_output(self, graph: Graph, rules: RuleSet) -> jax.Array:
        """The network's per-atom outputs y_i (n_atoms,), before scale, shifts and readout."""
        if has_layers(self.net):
            return self._output_from_embedding(self.embed(graph), graph, rules)
        return self.net.atomwise_output(graph, species_lookup(self.species, graph.species))

    def atomwise_energy_from_embedding(self, h0, graph: Graph, rules: RuleSet) -> jax.Array:
        return self._energy(graph, self._output_from_embedding(h0, graph, rules), rules)

    def atomwise_energy(self, graph: Graph, rules: RuleSet) -> jax.Array:
        """Atomwise contributions (eV for energies) of one frame for every architecture (``rules`` only act on layers)."""
        return self._energy(graph, self.network_output(graph, rules), rules)


def _per_frame(fn):
    """Let a single-frame method accept a batched graph by vmapping over frames."""

    def wrapped(self, params, graph: Graph, *args):
        if graph.is_batched:
            return jax.vmap(lambda g: fn(self, params, g, *args))(graph)
        return fn(self, params, graph, *args)

    wrapped.__doc__, wrapped.__name__ = fn.__doc__, fn.__name__
    return wrapped


@dataclass(frozen=True)
class Potential:
    """Pure-function interface of a SchNet, PaiNN, NequIP or body-ordered potential.

    Every method takes ``params`` (the ``nnx.State`` from :meth:`create` or
    :func:`jaxrel.checkpoint.load_checkpoint`) and a :class:`~jaxrel.graph.Graph`; a graph
    with a leading frame axis is vmapped over frames. Methods do no host-side input
    checks (they run under jit); call :meth:`check_graph` first on untrusted input.
    """

    config: ModelConfig
    graphdef: Any

    @classmethod
    def create(cls, config: ModelConfig, species_energies: dict[int, float] | None = None,
               energy_scale: float = 1.0, seed: int = 0, prior: tuple | None = None) -> tuple["Potential", nnx.State]:
        """A freshly initialised potential and its params.

        Args:
            config: hyperparameters.
            species_energies: per-species energy shifts e_Z, eV (missing species: 0).
            energy_scale: scale of the network output, eV.
            seed: PRNG seed of the initialisation.
            prior: with ``config.prior``: its (σ, ε), each (S, S) over the config's species, Å
                and eV (:func:`jaxrel.models.prior.fit_repulsive_prior`); None gives ε = 0
                until a checkpoint's values are loaded.
        Raises:
            ValueError: a float64 config while JAX runs in float32 (the params would silently
                be float32).
        """
        if config.dtype == "float64" and not jax.config.read("jax_enable_x64"):
            raise ValueError("the model is float64 but JAX runs in float32; set JAX_ENABLE_X64=1 or call "
                             "jax.config.update('jax_enable_x64', True) first (the jaxrel command does so itself)")
        model = EnergyModel(config, species_energies, energy_scale, prior, rngs=nnx.Rngs(seed))
        graphdef, params = nnx.split(model)
        return cls(config, graphdef), params

    def module(self, params) -> EnergyModel:
        """The NNX module for ``params`` (a State, or a tuple of States that make it up)."""
        return nnx.merge(self.graphdef, *(params if isinstance(params, tuple) else (params,)))

    @property
    def has_layers(self) -> bool:
        """True when the forward pass splits into message-passing layers (SchNet, PaiNN, NequIP), as the
        GNN-LRP relevance engine needs; False for the body-ordered model."""
        return has_layers(ARCHITECTURES[self.config.model])

    def embedding(self, params, graph: Graph) -> jax.Array:
        """Input features h⁽⁰⁾ = embed(Z) of one frame: (n_atoms, n_features).

        Raises:
            ValueError: for the body-ordered model, which has no message-passing layers.
        """
        return self.module(params).embed(graph)

    def atomwise_energy_from_embedding(self, params, h0: jax.Array, graph: Graph,
                                       rules: RuleSet | str = "identity") -> jax.Array:
        """Atomwise energies E_i (eV) of one frame from given input features h⁽⁰⁾.

        Gradient × input with respect to ``h0`` under a rule set is the unmasked
        relevance of every start atom (Schnake et al., TPAMI 2022, arXiv:2006.03589).

        Args:
            h0: (n_atoms, n_features) input features (see :meth:`embedding`).
            graph: one frame (unbatched; vmap for batches).
            rules: a :class:`~jaxrel.nn.RuleSet` or its name.
        Returns:
            (n_atoms,) eV; 0 for padded atoms.
        Raises:
            ValueError: an unknown rule name, or the body-ordered model (no layers).
        """
        return self.module(params).atomwise_energy_from_embedding(h0, graph, resolve_rules(rules))

    def layer_functions(self, params, graph: Graph, rules: RuleSet | str = "identity"):
        """The forward pass of one frame split into layers, for the relevance engine.

        Returns:
            ``(layers, energy_readout)``: ``layers[t - 1]`` maps h⁽ᵗ⁻¹⁾ to h⁽ᵗ⁾ (h⁽⁰⁾ from
            :meth:`embedding`; later states are arrays (SchNet; NequIP in e3nn-jax layout) or (s, v) tuples (PaiNN)
            with atoms on axis 0), and ``energy_readout`` maps h⁽ᵀ⁾ to atomwise energies
            (n_atoms,) eV. Composing them equals :meth:`atomwise_energy_from_embedding`.
        Raises:
            ValueError: an unknown rule name, or the body-ordered model (no layers).
        """
        return self.module(params).layer_functions(graph, resolve_rules(rules))

    def message_functions(self, params, graph: Graph, rules: RuleSet | str = "identity"):
        """Each layer split at its gather, for the walk-chain relevance engine.

        Layer t is h⁽ᵗ⁾ = post_t(h⁽ᵗ⁻¹⁾, pre_t(h⁽ᵗ⁻¹⁾)[senders]): ``pre_t`` is node-wise (row i of
        its output depends on row i of its input only), ``post_t`` uses its first argument
        node-wise and reaches other atoms only through the gathered rows (edge e carries
        sender e's row to receiver e). The Jacobian block of a walk step j → i is then
        δ_ij ∂post_i/∂h_i + Σ_{e: j→i} ∂post_i/∂x_e · ∂pre_j/∂h_j.

        Returns:
            ``(splits, energy_readout)``: ``splits[t - 1] = (pre_t, post_t)`` (pytrees with atoms,
            or edges for the gathered argument, on axis 0), ``energy_readout`` as in
            :meth:`layer_functions`. Composing them equals :meth:`layer_functions`.
        Raises:
            ValueError: an unknown rule name, or the body-ordered model (no layers).
        """
        return self.module(params).message_functions(graph, resolve_rules(rules))

    @_per_frame
    def atomwise_energy(self, params, graph: Graph, rules: RuleSet | str = "identity") -> jax.Array:
        """Atomwise energies E_i, eV: (n_atoms,) or (n_frames, n_atoms); 0 for padding.

        ``rules`` (a rule set or its name) changes gradients only, never the value; the
        body-ordered model has no layers for them to act on and ignores them.
        """
        return self.module(params).atomwise_energy(graph, resolve_rules(rules))

    def energy(self, params, graph: Graph, rules: RuleSet | str = "identity") -> jax.Array:
        """Total energy E = Σ_i E_i, eV: () for one frame, (n_frames,) for a batch."""
        return self.atomwise_energy(params, graph, rules).sum(-1)

    def species_shifts(self, params) -> dict[int, float]:
        """The fixed per-species energy shifts e_Z, eV: {atomic number: shift}.

        E_i = scale · y_i + e_{Z_i}; the shifts carry no relevance (they do not depend on
        the input features), so an explanation accounts for them separately.
        """
        shifts = np.asarray(self.module(params).shifts[...], np.float64)
        return {z: float(e) for z, e in zip(self.config.species, shifts)}

    def shift_total(self, params, species) -> float:
        """The part of a prediction that no input feature carries, eV: Σ_i e_{Z_i} for the sum
        readout, and for ``mean``/``softmax`` the one shift b that every species shares
        (:meth:`create`), since Σ_i w_i b = b; 0 for a dipole model.

        Args:
            species: (N,) atomic numbers of the real atoms of a frame.
        """
        shifts = self.species_shifts(params)
        values = [shifts[int(z)] for z in np.asarray(species).reshape(-1)]
        if self.config.target == "dipole" or not values:
            return 0.0
        return float(sum(values)) if self.config.readout == "sum" else float(values[0])

    def without_shifts(self, params):
        """The params with every species shift e_Z set to 0 (a copy; ``params`` is unchanged), so
        predictions carry only what the network computes from the input features."""
        module = nnx.clone(self.module(params))     # merged modules share the caller's variables
        module.shifts[...] = jnp.zeros_like(module.shifts[...])
        return nnx.split(module)[1]

    @_per_frame
    def predict(self, params, graph: Graph) -> jax.Array:
        """The model's prediction: energy or gap (eV), () per frame; the dipole μ (e·Å), (3,) per frame.

        A batched graph gives a leading frame axis.
        """
        module = self.module(params)
        if self.config.target == "dipole":
            return module.dipole(graph, module.network_output(graph, resolve_rules("identity")))[0]
        return self.energy(params, graph)

    @_per_frame
    def latent_charges(self, params, graph: Graph) -> jax.Array:
        """Latent atomic charges q_i (e) of a dipole model, (n_atoms,) or (n_frames, n_atoms); Σ_i q_i = 0
        exactly and 0 for padded atoms (:class:`EnergyModel`; Schütt et al. 2018, arXiv:1806.10349).

        Raises:
            ValueError: a model whose target is not ``"dipole"``.
        """
        if self.config.target != "dipole":
            raise ValueError(f"latent charges belong to dipole models; this model predicts {self.config.target}")
        module = self.module(params)
        return module.latent_charges(graph, module.network_output(graph, resolve_rules("identity")))

    @_per_frame
    def energy_and_forces(self, params, graph: Graph) -> tuple[jax.Array, jax.Array]:
        """Energy (eV) and forces F = −∂E/∂positions (eV/Å, (…, n_atoms, 3); 0 for padding)."""
        e, grad = jax.value_and_grad(
            lambda p: self.energy(params, graph._replace(positions=p)))(graph.positions)
        return e, -grad

    @_per_frame
    def prior_energy(self, params, graph: Graph) -> jax.Array:
        """The prior's energy Σ_(i<j) φ(r_ij), eV: () for one frame, (n_frames,) for a batch; 0
        without a prior. It is part of :meth:`energy`."""
        module = self.module(params)
        if not module.has_prior:
            return jnp.zeros((), graph.positions.dtype)
        return jnp.sum(jnp.where(graph.node_mask, module.prior_atomwise(graph), 0.0))

    def prior_pair_energy(self, params, distances, species) -> np.ndarray:
        """The prior's exact energy φ_ab(r) of pairs (:mod:`jaxrel.models.prior`).

        Args:
            distances: (m,) Å; species: (m, 2) atomic numbers of each pair.
        Returns:
            (m,) float64 eV; zeros for a model without a prior.
        """
        distances = jnp.asarray(distances, jnp.dtype(self.config.dtype))
        return np.asarray(self.module(params).prior_pair_energy(distances, jnp.asarray(species)), np.float64)

    def check_species(self, species) -> None:
        """Raise ``ValueError`` naming the first atom whose species the model does not know.

        Args:
            species: (n_atoms,) atomic numbers of real atoms.
        """
        known = set(self.config.species)
        for a, z in enumerate(np.asarray(species).tolist()):
            if z not in known:
                raise ValueError(f"atom {a} has species {z}, which the model was not trained on "
                                 f"(known: {', '.join(map(str, self.config.species))})")

    def check_energy_target(self, purpose: str) -> None:
        """Raise ``ValueError`` when the model does not predict energies (a gap or dipole model has no
        forces to drive ``purpose``, e.g. molecular dynamics)."""
        if self.config.target != "energy":
            raise ValueError(f"{purpose} needs a model of the energy, but this model predicts the "
                             f"{self.config.target}; use a model trained with --target energy")

    def check_graph(self, graph: Graph) -> None:
        """Host-side checks of a graph built elsewhere; ``ValueError`` with the fix in one sentence.

        Checks every frame's real atoms for species the model was not trained on
        (:meth:`check_species`), non-finite positions and atoms closer than 0.1 Å
        (:func:`jaxrel.graph.check_positions`; graphs from ``build_graphs`` passed it already).
        """
        pos = np.asarray(graph.positions)
        species = np.asarray(graph.species)
        mask = np.asarray(graph.node_mask)
        if pos.ndim == 2:
            pos, species, mask = pos[None], species[None], mask[None]
        cells = None if graph.cell is None else np.broadcast_to(np.asarray(graph.cell), (len(pos), 3, 3))
        for f in range(len(pos)):
            real = mask[f]
            self.check_species(species[f][real])
            check_positions(pos[f][real], min_distance=0.1, cell=None if cells is None else cells[f])
