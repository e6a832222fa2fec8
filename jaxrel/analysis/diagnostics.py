"""Stability diagnostics: numbers read off a model's explanation that may warn of MD failure.

Models that deviate from known physics can run unstable MD even when their energy and force
errors are small (Fu et al., "Forces are not enough", TMLR 2023, arXiv:2210.07237; Esders
et al., JCTC 2025, arXiv:2410.13833). The most direct deviation is a 2-body term that pulls
two atoms together below the shortest distance the training data ever showed them: MD then
finds the spurious minimum (jaxrel's rMD17-ethanol PaiNN let two hydrogens collapse to 0.5 Å).
Each diagnostic below is one number per model (:data:`DEFINITIONS`):

* **Dimer curves.** The model's 2-body term of an isolated species pair a–b at distance r,
  from its own many-body expansion, ε₂(r) = E(a–b at r) − E(a) − E(b) (rule-free; Chong et
  al. 2025, arXiv:2509.14146), and from GNN-LRP, the 2-body relevance
  R₂ = R({a, b}) − R({a}) − R({b}) of the same dimer (Schnake et al., TPAMI 2022,
  arXiv:2006.03589; plus the fixed prior's φ_ab(r) for a model with one). With r_ref the
  shortest a–b distance in the reference data, the **inner well** is the largest rise of ε₂
  going outwards within [r_min, r_ref], max_{r_min ≤ r ≤ r' ≤ r_ref} ε₂(r') − ε₂(r) ≥ 0: the
  energy a pair that came closer than anything it was trained on must climb to get back out
  (a spurious minimum behind a barrier, or a sink towards r → 0; 0 when ε₂ only rises
  inwards), and the **inner attraction** is the fraction of [r_min, r_ref] on which
  dε₂/dr > 0 (the pair is pulled
  together). The diagnostics take the maximum over species pairs.
* **Decay length**: the longest exponential decay length of the GNN-LRP pair relevance over
  species pairs (:func:`jaxrel.analysis.numerics.interaction_strength`, Esders et al. 2025).
* **Body-order shares**: the pooled ``|term|`` share of the 3-body terms and of everything above
  them (:func:`jaxrel.analysis.numerics.body_order_shares`), from the MBE and from GNN-LRP.
* **Seed spread**: the standard deviation of each diagnostic over the seeds of an ensemble
  (:func:`seed_spread`).

:func:`predictive_power` scores diagnostics against MD outcomes: the Spearman rank correlation
with the time to instability and the ROC AUC for separating unstable from stable models (the
Mann–Whitney U statistic divided by n₀n₁; Hanley & McNeil 1982, Radiology 143, 29), with the
direction of each diagnostic either free (the larger of AUC and 1 − AUC) or fixed by other
models (held-out transfer).

Units: Å, eV.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from jaxrel.analysis.numerics import body_order_shares, interaction_strength, species_label
from jaxrel.geometry import minimum_image
from jaxrel.nn import resolve_rules
from jaxrel.relevance.backward import masked_relevance
from jaxrel.relevance.mbe import cluster_graph, potential_cluster_energy

DIMER_R_MIN = 0.35
"""Å: the shortest distance at which dimer curves are evaluated (r_min of the module docstring)."""
N_INNER = 48
"""Grid points of a dimer curve between r_min and r_ref (both included)."""
REFERENCE_CAP = 0.02
"""r_ref is capped at (1 − REFERENCE_CAP) × cutoff in :func:`stability_diagnostics`."""
N_OUTER = 32
"""Grid points of a dimer curve between r_ref and the cutoff (r_ref left out)."""

DEFINITIONS = {
    "mbe_inner_well_eV": "max over species pairs of the largest outward rise of ε₂ within [r_min, r_ref], "
                         "max ε₂(r') − ε₂(r) over r_min ≤ r ≤ r' ≤ r_ref; ε₂ the model's own 2-body term of the "
                         "isolated pair (MBE), r_ref the pair's shortest distance in the reference data, "
                         "r_min = 0.35 Å (eV, ≥ 0; 0 when ε₂ only rises inwards)",
    "relevance_inner_well_eV": "the same for the GNN-LRP 2-body relevance of the isolated pair (eV, ≥ 0)",
    "mbe_inner_attraction": "max over species pairs of the fraction of [r_min, r_ref] where dε₂/dr > 0 "
                            "(the model's 2-body force pulls the pair together; 0..1)",
    "decay_length_A": "longest decay length over species pairs of the GNN-LRP pair relevance "
                      "(fit mean |R₂| ≈ A exp(−r/λ) over distance bins, Esders et al. 2025; Å)",
    "mbe_three_body_share": "pooled |term| share of the MBE's 3-body terms over the explained frames (0..1)",
    "mbe_higher_order_share": "pooled |term| share of what the MBE leaves above its highest order (0..1)",
    "relevance_three_body_share": "pooled |term| share of the GNN-LRP 3-body relevance (0..1)",
}
"""Every diagnostic's one-line definition (the keys of :attr:`Diagnostics.values`)."""
DIMER_DIAGNOSTICS = ("mbe_inner_well_eV", "relevance_inner_well_eV", "mbe_inner_attraction")
"""The diagnostics read off the dimer curves (one value per model, no frames needed)."""


class DimerCurve(NamedTuple):
    """The 2-body term of one isolated species pair against distance.

    Fields::

        distance         (n,) float64 | Å, from r_min to the cutoff; the first N_INNER points end at r_ref
        mbe              (n,) float64 | eV, ε₂(r) = E(pair) − E(a) − E(b)
        relevance        (n,) float64 or None | eV, GNN-LRP R₂ of the pair under the rule
        reference_min_A  float | Å, r_ref: the pair's shortest distance in the reference data
    """

    distance: np.ndarray
    mbe: np.ndarray
    relevance: np.ndarray | None
    reference_min_A: float


class Diagnostics(NamedTuple):
    """A model's stability diagnostics (:func:`stability_diagnostics`).

    values: {name in :data:`DEFINITIONS`: float, or None where it does not apply (no
    message-passing layers for the relevance ones, no decaying pair)}; inner_well_eV:
    {species pair: (MBE, GNN-LRP or None)} eV; curves: {species pair: :class:`DimerCurve`};
    rule: the GNN-LRP rule of the relevance diagnostics (None without layers).
    """

    values: dict[str, float | None]
    inner_well_eV: dict[tuple[int, int], tuple[float, float | None]]
    curves: dict[tuple[int, int], DimerCurve]
    rule: str | None

    def summary(self) -> dict:
        """JSON-ready: values, definitions, per-pair wells and r_ref."""
        return {"values": self.values, "definitions": DEFINITIONS, "rule": self.rule,
                "species_pairs": {species_label(k): {"mbe_inner_well_eV": w[0], "relevance_inner_well_eV": w[1],
                                                     "reference_min_A": self.curves[k].reference_min_A}
                                  for k, w in self.inner_well_eV.items()}}


def reference_min_distances(positions, species, cell=None, chunk: int = 64) -> dict[tuple[int, int], float]:
    """The shortest distance of every species pair over frames (minimum image in a cell).

    Args:
        positions: (n_frames, n_atoms, 3) or (n_atoms, 3) float, Å.
        species: (n_atoms,) int.
        cell: (3, 3) or (n_frames, 3, 3) Å rows, or None (free space).
        chunk: frames per vectorised step.

    Returns:
        {(Z_a, Z_b) with Z_a ≤ Z_b: shortest distance, Å} for every pair of species present
        (a species with one atom has no (a, a) entry).
    Raises:
        ValueError: fewer than two atoms, or positions not shaped (…, n_atoms, 3).
    """
    x = np.asarray(positions, np.float64)
    x = x[None] if x.ndim == 2 else x
    species = np.asarray(species)
    if x.ndim != 3 or x.shape[1:] != (len(species), 3) or len(species) < 2:
        raise ValueError(f"positions have shape {np.shape(positions)} for {len(species)} species; give "
                         "(n_frames, n_atoms, 3) Å with at least two atoms")
    i, j = np.triu_indices(len(species), k=1)
    shortest = np.full(len(i), np.inf)
    cells = None if cell is None else np.broadcast_to(np.asarray(cell, np.float64), (len(x), 3, 3))
    step = chunk if cell is None or np.ndim(cell) == 2 else 1
    for start in range(0, len(x), step):
        d = x[start:start + step, j] - x[start:start + step, i]
        if cells is not None:
            d = minimum_image(d, cells[start])
        shortest = np.minimum(shortest, np.linalg.norm(d, axis=-1).min(axis=0))
    keys = np.sort(np.stack([species[i], species[j]], axis=1), axis=1)
    out = {}
    for key, r in zip(map(tuple, keys.tolist()), shortest):
        out[key] = min(out.get(key, np.inf), float(r))
    return dict(sorted(out.items()))


def dimer_distances(reference_min: float, cutoff: float) -> np.ndarray:
    """The grid of a :class:`DimerCurve`: N_INNER points on [r_min, r_ref], N_OUTER on (r_ref, cutoff)."""
    inner = np.linspace(DIMER_R_MIN, reference_min, N_INNER)
    return np.concatenate([inner, np.linspace(reference_min, cutoff, N_OUTER + 1)[1:]])


def _dimer_positions(r: np.ndarray) -> np.ndarray:
    x = np.zeros((len(r), 2, 3))
    x[:, 1, 0] = r
    return x


@partial(jax.jit, static_argnames=("cluster_energy",))
def _dimer_mbe(cluster_energy, params, positions, species):
    """ε₂ (m,) of m dimers: positions (m, 2, 3), species (m, 2)."""
    def one(x, z):
        alone = jnp.zeros_like(z)
        return (cluster_energy(params, x, z, None) - cluster_energy(params, x, alone.at[0].set(z[0]), None)
                - cluster_energy(params, x, alone.at[1].set(z[1]), None))
    return jax.vmap(one)(positions, species)


@partial(jax.jit, static_argnames=("potential", "rules"))
def _dimer_relevance(potential, params, positions, species, rules):
    """GNN-LRP R₂ (m,) of m dimers (subgraph masks {0}, {1}, {0, 1} at every layer)."""
    T = potential.config.n_interactions
    sets = jnp.asarray([[[0, -1]] * (T + 1), [[1, -1]] * (T + 1), [[0, 1]] * (T + 1)], jnp.int32)

    def one(x, z):
        graph = cluster_graph(x, z, potential.config.cutoff)
        relevance = masked_relevance(potential, params, graph, sets, rules, False)[0].sum(axis=1)
        return relevance[2] - relevance[0] - relevance[1]
    return jax.vmap(one)(positions, species)


def dimer_curves(potential, params, reference_min: dict[tuple[int, int], float], *,
                 rules: str | None = "gi") -> dict[tuple[int, int], DimerCurve]:
    """The MBE and GNN-LRP 2-body term of each isolated species pair against distance.

    Args:
        potential, params: the model (an energy model; any potential with ``config.cutoff`` and
            ``energy`` for the MBE curve, message-passing layers for the relevance curve).
        reference_min: {(Z_a, Z_b): r_ref Å} (:func:`reference_min_distances`).
        rules: the GNN-LRP rule (``"gi"``, ``"lrp-eps"``, ``"lrp-gamma"``), or None for no
            relevance curve (forced for a model without message-passing layers).

    Returns:
        {pair: :class:`DimerCurve`} on the grid of :func:`dimer_distances`.
    Raises:
        ValueError: an r_ref outside (r_min, cutoff), an unknown rule, species the model does not know.
    """
    cutoff = float(potential.config.cutoff)
    for pair, r in reference_min.items():
        if not DIMER_R_MIN < r < cutoff:
            raise ValueError(f"the shortest {species_label(pair)} distance is {r:.3g} Å; dimer curves need it "
                             f"between {DIMER_R_MIN} Å and the cutoff {cutoff} Å")
        potential.check_species(np.asarray(pair))
    pairs = list(reference_min)
    distances = [dimer_distances(reference_min[p], cutoff) for p in pairs]
    n = len(distances[0])
    dtype = jnp.dtype(potential.config.dtype)
    positions = jnp.asarray(np.concatenate([_dimer_positions(r) for r in distances]), dtype)
    species = jnp.asarray(np.repeat(np.asarray(pairs, np.int32), n, axis=0))
    mbe = np.asarray(_dimer_mbe(potential_cluster_energy(potential), params, positions, species), np.float64)
    relevance = None
    if rules is not None and getattr(potential, "has_layers", False):
        relevance = np.asarray(_dimer_relevance(potential, params, positions, species, resolve_rules(rules)),
                               np.float64)
        relevance = relevance + potential.prior_pair_energy(params, np.concatenate(distances), np.asarray(species))
    return {p: DimerCurve(distances[k], mbe[k * n:(k + 1) * n],
                          None if relevance is None else relevance[k * n:(k + 1) * n], reference_min[p])
            for k, p in enumerate(pairs)}


def inner_well(curve: np.ndarray) -> float:
    """The largest outward rise max_{i ≤ j} ε_j − ε_i of a dimer curve's values on [r_min, r_ref]
    (its first N_INNER points, ordered by distance), eV ≥ 0."""
    inner = np.asarray(curve)[:N_INNER]
    outward_max = np.maximum.accumulate(inner[::-1])[::-1]
    return float((outward_max - inner).max())


def inner_attraction(distance: np.ndarray, curve: np.ndarray) -> float:
    """Fraction of [r_min, r_ref] (by length) where dε/dr > 0, from finite differences of the grid."""
    r, e = np.asarray(distance)[:N_INNER], np.asarray(curve)[:N_INNER]
    width = np.diff(r)
    return float(width[np.diff(e) > 0].sum() / width.sum())


def stability_diagnostics(potential, params, reference_positions, species, cell=None, *, explanations=None,
                          rules: str = "gi") -> Diagnostics:
    """Every diagnostic of :data:`DEFINITIONS` for one model.

    Args:
        potential, params: the model.
        reference_positions: (n_frames, n_atoms, 3) Å: the data whose shortest distances give r_ref
            (e.g. the training set, or every frame of the audited file). A species pair that never
            came within the cutoff gets r_ref just below it (``(1 − REFERENCE_CAP) × cutoff``): the
            data never showed the model that pair interacting at all.
        species: (n_atoms,) int; cell: (3, 3) Å rows or None.
        explanations: {"mbe": Explanation, rule: Explanation} of some frames of the same system
            (as :func:`jaxrel.analysis.faithfulness.decompose` gives), for the decay length and the
            body-order shares; those diagnostics are None when it (or the method) is missing.
        rules: the GNN-LRP rule of the relevance dimer curve and of the relevance diagnostics.

    Returns:
        :class:`Diagnostics`.
    Raises:
        ValueError: as :func:`reference_min_distances` and :func:`dimer_curves`.
    """
    cap = (1.0 - REFERENCE_CAP) * float(potential.config.cutoff)
    reference = {k: min(r, cap) for k, r in reference_min_distances(reference_positions, species, cell).items()}
    layered = bool(getattr(potential, "has_layers", False))
    curves = dimer_curves(potential, params, reference, rules=rules if layered else None)
    wells = {k: (inner_well(c.mbe), None if c.relevance is None else inner_well(c.relevance))
             for k, c in curves.items()}
    values: dict[str, float | None] = {
        "mbe_inner_well_eV": max(w[0] for w in wells.values()),
        "relevance_inner_well_eV": max(w[1] for w in wells.values()) if layered else None,
        "mbe_inner_attraction": max(inner_attraction(c.distance, c.mbe) for c in curves.values()),
        "decay_length_A": None, "mbe_three_body_share": None, "mbe_higher_order_share": None,
        "relevance_three_body_share": None}
    explanations = explanations or {}
    relevance = explanations.get(rules)
    if relevance is not None and 2 in relevance.tables and len(relevance.tables[2].relevance):
        decays = [s.decay_length_A for s in interaction_strength(relevance.tables[2]).values()
                  if s.decay_length_A is not None]
        values["decay_length_A"] = max(decays) if decays else None
    for name, key in (("mbe", "mbe"), (rules, "relevance")):
        e = explanations.get(name)
        if e is not None and 3 in e.tables:
            shares = body_order_shares(e).abs_share
            values[f"{key}_three_body_share"] = shares["3"].pooled
            if key == "mbe":
                values["mbe_higher_order_share"] = shares["residual"].pooled
    return Diagnostics(values, wells, curves, rules if layered else None)


def ensemble_diagnostics(models: list[tuple], reference_positions, species, cell=None, *, explanations=None,
                         rules: str = "gi") -> tuple[Diagnostics, dict[str, float | None]]:
    """The diagnostics of an ensemble of seeds and their seed spread.

    The dimer-curve diagnostics are computed for every member and averaged (the curves too);
    those read off ``explanations`` (the ensemble's mean decompositions, as
    :func:`jaxrel.analysis.faithfulness.run_ensemble_audit` gives) are computed once, so
    their spread is None.

    Args:
        models: [(potential, params)], one per seed; the rest as :func:`stability_diagnostics`.

    Returns:
        ``(mean diagnostics, {name: standard deviation over seeds or None})``.
    Raises:
        ValueError: no models, or as :func:`stability_diagnostics`.
    """
    if not models:
        raise ValueError("no models: give one (potential, params) per seed")
    members = [stability_diagnostics(p, q, reference_positions, species, cell, explanations=explanations,
                                     rules=rules) for p, q in models]
    if len(members) == 1:
        return members[0], {name: None for name in DEFINITIONS}
    spread = seed_spread([m.values for m in members])
    values = dict(members[0].values)
    for name in DIMER_DIAGNOSTICS:
        if values[name] is not None:
            values[name] = float(np.mean([m.values[name] for m in members]))
    for name in DEFINITIONS:
        if name not in DIMER_DIAGNOSTICS:
            spread[name] = None
    curves = {k: c._replace(mbe=np.mean([m.curves[k].mbe for m in members], axis=0),
                            relevance=None if c.relevance is None else
                            np.mean([m.curves[k].relevance for m in members], axis=0))
              for k, c in members[0].curves.items()}
    wells = {k: (float(np.mean([m.inner_well_eV[k][0] for m in members])),
                 None if w[1] is None else float(np.mean([m.inner_well_eV[k][1] for m in members])))
             for k, w in members[0].inner_well_eV.items()}
    return Diagnostics(values, wells, curves, members[0].rule), spread


def seed_spread(members: list[dict[str, float | None]]) -> dict[str, float | None]:
    """Standard deviation (ddof = 1) of each diagnostic over the seeds of an ensemble; None
    where fewer than two members have a value.

    Args:
        members: each seed's :attr:`Diagnostics.values` (or the ``"values"`` of its
            :meth:`Diagnostics.summary`).

    Raises:
        ValueError: no members.
    """
    if not members:
        raise ValueError("no diagnostics to spread: give one per seed")
    out = {}
    for name in DEFINITIONS:
        values = [m[name] for m in members if m.get(name) is not None]
        out[name] = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return out


class Power(NamedTuple):
    """How well one score predicts MD instability (:func:`predictive_power`).

    spearman: rank correlation with the time to instability (NaN when either is constant);
    auc: ROC AUC of the score (higher = unstable in the given direction) for unstable against
    stable models; direction: +1 if larger scores mean unstable, −1 otherwise; n: models
    with a score; n_unstable: unstable ones among them; partial_spearman: the rank correlation
    with the time to instability at a fixed control score (e.g. the force MAE;
    :func:`partial_spearman`), NaN without one.
    """

    spearman: float
    auc: float
    direction: int
    n: int
    n_unstable: int
    partial_spearman: float = float("nan")


def roc_auc(score, unstable) -> float:
    """P(score of an unstable model > score of a stable one), ties counting ½ (Mann–Whitney U / n₀n₁).

    Raises:
        ValueError: no unstable or no stable model.
    """
    score, unstable = np.asarray(score, np.float64), np.asarray(unstable, bool)
    if unstable.all() or not unstable.any():
        raise ValueError(f"the AUC needs unstable and stable models; got {int(unstable.sum())} unstable "
                         f"of {len(unstable)}")
    u = stats.mannwhitneyu(score[unstable], score[~unstable], alternative="two-sided").statistic
    return float(u / (unstable.sum() * (~unstable).sum()))


def partial_spearman(x, y, z) -> float:
    """Spearman rank correlation of x and y with z held fixed: the partial correlation of the
    ranks, (ρ_xy − ρ_xz ρ_yz) / √((1 − ρ_xz²)(1 − ρ_yz²)) (Kendall & Stuart, The Advanced
    Theory of Statistics, vol. 2, §27.23); NaN when a variable is constant or fully explained by z.

    Args:
        x, y, z: (m,) float, finite.
    """
    x, y, z = (np.asarray(a, np.float64) for a in (x, y, z))
    if min(np.ptp(x), np.ptp(y), np.ptp(z)) == 0:
        return float("nan")
    rho = stats.spearmanr(np.stack([x, y, z], axis=1)).statistic
    xy, xz, yz = rho[0, 1], rho[0, 2], rho[1, 2]
    denominator = np.sqrt((1 - xz ** 2) * (1 - yz ** 2))
    return float((xy - xz * yz) / denominator) if denominator > 0 else float("nan")


def predictive_power(score, time_to_instability, unstable, direction: int | None = None,
                     control=None) -> Power:
    """Spearman ρ with the time to instability and the ROC AUC for unstable vs stable.

    Args:
        score: (m,) float, NaN where a model has no value (left out).
        time_to_instability: (m,) ps (the run length for models that stayed stable).
        unstable: (m,) bool.
        direction: +1 (larger = unstable) or −1; None picks the direction with AUC ≥ ½ on
            these models (an in-sample choice: report it as such).
        control: (m,) float, e.g. the force MAE, for :attr:`Power.partial_spearman`; None for none.

    Returns:
        :class:`Power` (``auc`` in the chosen direction).
    Raises:
        ValueError: shapes differ, or as :func:`roc_auc`.
    """
    score, t, unstable = (np.asarray(a, np.float64) for a in (score, time_to_instability, unstable))
    if not score.shape == t.shape == unstable.shape:
        raise ValueError(f"score {score.shape}, times {t.shape} and labels {unstable.shape} must be one per model")
    keep = np.isfinite(score)
    score, t, unstable = score[keep], t[keep], unstable[keep].astype(bool)
    auc = roc_auc(score, unstable)
    if direction is None:
        direction = 1 if auc >= 0.5 else -1
    rho = stats.spearmanr(score, t).statistic if np.ptp(score) > 0 and np.ptp(t) > 0 else np.nan
    partial = np.nan if control is None else partial_spearman(score, t, np.asarray(control, np.float64)[keep])
    return Power(float(rho), auc if direction == 1 else 1.0 - auc, direction, int(len(score)), int(unstable.sum()),
                 float(partial))
