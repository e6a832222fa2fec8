"""Chemical insight from a trained model of molecules: where a prediction sits among the atoms,
and how the model's per-atom quantities compare with partial charges.

Two analyses of one model on labelled frames (e.g. G2 molecules from ``jaxrel generate xtb``):

* **Locality** (Esders et al. 2025, arXiv:2410.13833, compare how models build intensive and
  extensive properties): the GNN-LRP relevance of each atom, R_i = the summed relevance of the
  walks that start at atom i, which is gradient × input at the embedding under the rule set,
  Σ_features h⁽⁰⁾_i ⊙ ∂P/∂h⁽⁰⁾_i (Schnake et al. 2022, arXiv:2006.03589); then how many atoms
  carry 90 % of ``Σ_i abs(R_i)`` (:func:`~jaxrel.analysis.numerics.relevance_locality`), as a share of
  the molecule's atoms. An extensive energy spreads over all atoms; a localised intensive
  property may rest on a few.
* **Charges** (Schütt et al. 2018, arXiv:1806.10349): the model's per-atom quantity against the
  reference partial charges (GFN2-xTB's), per element (Pearson r, and the MAE where both are
  charges). The per-atom quantity is a dipole model's latent charge q_i (e), or for an energy
  or gap model its atomwise contribution without the species shifts (eV): E_i − e_Z for the sum
  readout, and the readout-weighted network output for ``mean``/``softmax``.

:func:`chemical_insight` computes both; :func:`write_chemical_insight` writes
``chemistry.json`` and two figures, and :func:`~jaxrel.analysis.report.build_report` shows them.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrel.analysis.numerics import Agreement, per_species_agreement, relevance_locality, species_label
from jaxrel.analysis.plots import plot_locality, plot_per_species
from jaxrel.files import write_json
from jaxrel.graph import Graph, build_graphs, concatenate_graphs
from jaxrel.nn import resolve_rules
from jaxrel.relevance.backward import masked_relevance

FRACTION = 0.9
"""The share of ``Σ_i abs(R_i)`` whose carriers :func:`chemical_insight` counts."""


class ChemicalInsight(NamedTuple):
    """Locality and per-atom quantities of one model on F frames with A real atoms in all.

    Fields::

        target, readout   str             | the model's (:class:`~jaxrel.models.ModelConfig`)
        quantity          str             | what ``values`` is, with its unit
        atoms_for_share   (F,) int64      | atoms that carry 90 % of Σ|R_i| in each frame; 0 where
                                            no atom has relevance (see ``has_relevance``)
        n_atoms           (F,) int64      | real atoms of each frame
        has_relevance     (F,) bool       | False where every R_i is 0: a prediction that no input
                                            feature carries, e.g. the zero dipole of a single atom
                                            or of H₂ (symmetry makes both latent charges 0)
        species           (A,) int64      | atomic number of every real atom, frame after frame
        values            (A,) float64    | the model's per-atom quantity (module docstring)
        reference         (A,) float64 or None | reference partial charges, e; None without them
        charges           {Z: Agreement}  | ``values`` against ``reference`` per element ({} without)
    """

    target: str
    readout: str
    quantity: str
    atoms_for_share: np.ndarray
    n_atoms: np.ndarray
    has_relevance: np.ndarray
    species: np.ndarray
    values: np.ndarray
    reference: np.ndarray | None
    charges: dict[int, Agreement]

    @property
    def share_of_atoms(self) -> np.ndarray:
        """(F',) the share of the atoms that carry 90 % of the relevance, for the F' frames with
        relevance (``has_relevance``)."""
        return (self.atoms_for_share / self.n_atoms)[self.has_relevance]

    def summary(self) -> dict:
        """JSON types: locality (mean, median, per frame with relevance) and the per-element agreement."""
        share = self.share_of_atoms
        return {"target": self.target, "readout": self.readout, "quantity": self.quantity,
                "locality": {"fraction_of_relevance": FRACTION, "n_frames": int(len(share)),
                             "n_frames_without_relevance": int((~self.has_relevance).sum()),
                             "atoms_mean": float(self.atoms_for_share[self.has_relevance].mean()),
                             "share_of_atoms_mean": float(share.mean()),
                             "share_of_atoms_median": float(np.median(share)), "share_per_frame": share.tolist()},
                "charges": {species_label((z,)): a._asdict() for z, a in self.charges.items()}}


@partial(jax.jit, static_argnames=("potential", "rules"))
def start_atom_relevance(potential, params, graph: Graph, rules: str = "gi") -> jax.Array:
    """R_i: the summed relevance of the walks that start at each atom (module docstring).

    Args:
        potential, params: a message-passing model; graph: one frame or a batch.
        rules: a rule-set name.
    Returns:
        (n_atoms,) or (n_frames, n_atoms), in the prediction's unit; 0 for padded atoms.

    It is the unmasked gradient × input of the relevance engine
    (:func:`jaxrel.relevance.backward.masked_relevance` with no masks).
    """
    no_masks = jnp.zeros((0, potential.config.n_interactions + 1, 1), jnp.int32)

    def one(g):
        _, _, gradient_x_input = masked_relevance(potential, params, g, no_masks, resolve_rules(rules),
                                                  all_start=True)
        return jnp.where(g.node_mask, gradient_x_input, 0.0)

    return jax.vmap(one)(graph) if graph.is_batched else one(graph)


@partial(jax.jit, static_argnames="potential")
def _per_atom_values(potential, params, graph: Graph) -> jax.Array:
    if potential.config.target == "dipole":
        return potential.latent_charges(params, graph)
    return potential.atomwise_energy(potential.without_shifts(params), graph)


def chemical_insight(potential, params, frames, rules: str = "gi") -> ChemicalInsight:
    """Locality of the relevance and the per-atom quantity against partial charges (module docstring).

    Args:
        potential, params: a SchNet, PaiNN or NequIP model of any target.
        frames: a :class:`~jaxrel.data.Frames` or a list of them (e.g. the molecules of
            :func:`jaxrel.data.read_molecules`); with ``charges`` (e) in every one, the charge
            comparison is made.
        rules: the rule set of the relevance (``"gi"``, ``"lrp-eps"``, ``"lrp-gamma"``).
    Returns:
        :class:`ChemicalInsight`.
    Raises:
        ValueError: a model without message-passing layers, species the model does not know,
            bad frames (as :func:`jaxrel.graph.build_graphs`), or non-finite relevance.
    """
    if not potential.has_layers:
        raise ValueError(f"the {potential.config.model} model has no message-passing layers for GNN-LRP; "
                         "use schnet, painn or nequip")
    parts = list(frames) if isinstance(frames, (list, tuple)) else [frames]
    for f in parts:
        potential.check_species(f.species)
    graph = concatenate_graphs([build_graphs(f.positions, f.species, potential.config.cutoff, cell=f.cell)
                                for f in parts]).astype(potential.config.dtype)
    mask = np.asarray(graph.node_mask)
    relevance = np.asarray(start_atom_relevance(potential, params, graph, rules), np.float64)
    values = np.asarray(_per_atom_values(potential, params, graph), np.float64)[mask]
    if not np.isfinite(relevance).all():
        f = int(np.flatnonzero(~np.isfinite(relevance).all(1))[0])
        raise ValueError(f"frame {f} has non-finite relevance; check the model's params and the frame's positions")
    has_relevance = np.abs(relevance).sum(1) > 0
    k = np.array([relevance_locality(r[m], FRACTION) if keep else 0
                  for r, m, keep in zip(relevance, mask, has_relevance)], np.int64)
    species = np.asarray(graph.species)[mask].astype(np.int64)
    reference = (np.concatenate([f.charges.reshape(-1) for f in parts])
                 if all(f.charges is not None for f in parts) else None)
    quantity = ("latent charge q_i (e)" if potential.config.target == "dipole" else
                f"atomwise {potential.config.target} contribution without species shifts (eV)")
    return ChemicalInsight(
        target=potential.config.target, readout=potential.config.readout, quantity=quantity,
        atoms_for_share=k, n_atoms=mask.sum(1).astype(np.int64), has_relevance=has_relevance,
        species=species, values=values,
        reference=reference,
        charges={} if reference is None else per_species_agreement(values, reference, species))


def write_chemical_insight(result: ChemicalInsight, out, label: str | None = None) -> dict[str, Path]:
    """Write ``chemistry.json`` (:meth:`ChemicalInsight.summary`), ``chemistry_locality.png`` and,
    with reference charges, ``chemistry_charges.png`` into the folder ``out`` (created).

    Args:
        label: the model's name in the locality figure (default: target and readout).
    Returns:
        {"json" | "locality" | "charges": path}; no locality figure when no frame has relevance.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    name = label or f"{result.target} ({result.readout})"
    paths = {}
    if result.has_relevance.any():
        paths["locality"] = plot_locality({name: result.share_of_atoms}, out / "chemistry_locality.png",
                                          fraction=FRACTION)
    if result.reference is not None:
        paths["charges"] = plot_per_species(result.values, result.reference, result.species,
                                            out / "chemistry_charges.png", xlabel="reference partial charge (e)",
                                            ylabel=result.quantity)
    paths["json"] = write_json(out / "chemistry.json", result.summary())
    return paths
