"""What a trained potential learned, read off its explanation.

Layers, each importing only the ones above it:

* :mod:`~jaxrel.analysis.numerics`: numpy functions over :class:`~jaxrel.relevance.Table`\\ s
  and :class:`~jaxrel.relevance.Explanation`\\ s returning small typed results (no plotting);
* :mod:`~jaxrel.analysis.plots`: every figure (matplotlib, PNG), shared by all writers;
* :mod:`~jaxrel.analysis.embeddings`: a model's learned element embeddings, projected (PCA),
  scored against the periodic table and plotted;
* :mod:`~jaxrel.analysis.chemistry`: locality of a prediction's relevance and per-atom quantities
  against partial charges; :mod:`~jaxrel.analysis.chempot`: the local chemical potential around a
  molecule (cube file and figures);
* :mod:`~jaxrel.analysis.write` and :mod:`~jaxrel.analysis.recovery`: run analyses, write
  CSV/JSON/PNG and return the results in memory;
* :mod:`~jaxrel.analysis.diagnostics`: stability diagnostics read off an explanation (dimer
  curves, decay, body-order shares) and how well they predict MD instability;
* :mod:`~jaxrel.analysis.faithfulness`: the audit (MBE beside GNN-LRP and the exact terms);
* :mod:`~jaxrel.analysis.report`: the self-contained HTML page.
"""

from jaxrel.analysis.numerics import (Agreement, BinnedCurve, Share, Shares, Strength, atomwise_comparison,
                                      atomwise_relevance, body_order_shares, interaction_strength,
                                      pair_relevance_curve, per_species_agreement, rdf_label, relevance_locality,
                                      species_label, triplet_angle_profile, triplet_distance_profile)
from jaxrel.analysis.chempot import ChemicalPotential, local_chemical_potential, write_chemical_potential, write_cube
from jaxrel.analysis.chemistry import ChemicalInsight, chemical_insight, start_atom_relevance, write_chemical_insight
from jaxrel.analysis.embeddings import (EmbeddingPCA, EmbeddingSeeds, SeedSpread, element_embeddings,
                                        embedding_pca, embedding_pca_seeds, group_and_period,
                                        plot_element_embeddings)
from jaxrel.analysis.diagnostics import (DEFINITIONS, DimerCurve, Diagnostics, Power, dimer_curves,
                                         ensemble_diagnostics, predictive_power, reference_min_distances, roc_auc,
                                         stability_diagnostics)
from jaxrel.analysis.faithfulness import (Audit, PhysicsScore, compare_decompositions, run_audit,
                                          run_ensemble_audit, with_diagnostics, write_audit)
from jaxrel.analysis.plots import (plot_atomwise, plot_body_order_shares, plot_decay, plot_dimer_curves,
                                   plot_force_components, plot_locality, plot_method_totals, plot_pair_curves, plot_pair_curves_by_method,
                                   plot_per_species, plot_terms_against, plot_triplet_profiles)
from jaxrel.analysis.recovery import Recovery, TermRecovery, compare_with_ground_truth, is_ground_truth, write_recovery
from jaxrel.analysis.report import build_report
from jaxrel.analysis.write import Written, write_analysis

__all__ = ["DEFINITIONS", "DimerCurve", "Diagnostics", "Power", "dimer_curves", "ensemble_diagnostics",
           "predictive_power", "reference_min_distances", "roc_auc", "stability_diagnostics", "with_diagnostics",
           "plot_dimer_curves", "ChemicalPotential", "local_chemical_potential", "write_chemical_potential", "write_cube",
           "ChemicalInsight", "chemical_insight", "start_atom_relevance", "write_chemical_insight",
           "plot_locality", "plot_per_species", "EmbeddingPCA", "EmbeddingSeeds", "SeedSpread", "element_embeddings", "embedding_pca",
           "embedding_pca_seeds", "group_and_period", "plot_element_embeddings",
           "Audit", "PhysicsScore", "compare_decompositions", "run_audit", "run_ensemble_audit", "write_audit",
           "plot_force_components", "plot_method_totals", "plot_pair_curves_by_method", "plot_terms_against",
           "Agreement", "BinnedCurve", "Recovery", "Share", "Shares", "Strength", "TermRecovery", "Written",
           "atomwise_comparison", "atomwise_relevance", "body_order_shares", "build_report",
           "compare_with_ground_truth", "interaction_strength", "is_ground_truth", "pair_relevance_curve",
           "plot_atomwise", "plot_body_order_shares", "plot_decay", "plot_pair_curves", "plot_triplet_profiles",
           "per_species_agreement", "rdf_label", "relevance_locality", "species_label", "triplet_angle_profile", "triplet_distance_profile", "write_analysis",
           "write_recovery"]
