"""Relevance engine: rules, relevant walks (GNN-LRP), subgraph relevance, n-body terms.

Sources: Schnake et al., "Higher-order explanations of graph neural networks via relevant
walks", TPAMI 2022, arXiv:2006.03589; Xiong et al., "Efficient computation of
higher-order subgraph attribution via message passing", ICML 2022.
"""

from jaxrel.relevance.nbody import (NBody, Table, connected_sets, nbody_decomposition, save_nbody,
                                    nbody_decomposition_frames, subset_relevance)
from jaxrel.relevance.rules import RULES, RuleSet, apply_mask
from jaxrel.relevance.walks import (body_order, enumerate_walks, select_walks, top_k_walks,
                                    walk_relevance)

__all__ = ["NBody", "RULES", "body_order", "select_walks", "RuleSet", "Table", "apply_mask", "connected_sets",
           "enumerate_walks", "nbody_decomposition", "nbody_decomposition_frames",
           "save_nbody", "subset_relevance", "top_k_walks", "walk_relevance"]
