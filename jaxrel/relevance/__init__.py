"""Relevance engine: relevant walks (GNN-LRP), subgraph relevance, n-body terms, explanations.

The model's own many-body expansion (:mod:`jaxrel.relevance.mbe`, Chong et al. 2025,
arXiv:2509.14146) gives rule-free n-body terms in the same tables, to hold GNN-LRP against.

Sources: Schnake et al., "Higher-order explanations of graph neural networks via relevant
walks", TPAMI 2022, arXiv:2006.03589; Xiong et al., "Efficient computation of
higher-order subgraph attribution via message passing", ICML 2022.

The engine needs of a potential only its layered forward pass (:class:`LayeredPotential`):
the rule sets it is evaluated under come from :mod:`jaxrel.nn`.
"""

from jaxrel.relevance.backward import LayeredPotential
from jaxrel.relevance.explanation import Explanation, ensemble_mean, explain
from jaxrel.relevance.mbe import many_body_expansion
from jaxrel.relevance.nbody import (NBody, connected_sets, mobius_inversion, nbody_decomposition, nbody_decompositions,
                                    subset_relevance)
from jaxrel.relevance.table import Table
from jaxrel.relevance.walks import (all_walk_relevances, body_order, enumerate_walks, select_walks, top_k_walks,
                                    walk_relevance)

__all__ = ["Explanation", "all_walk_relevances", "ensemble_mean", "LayeredPotential", "NBody", "Table", "body_order", "connected_sets",
           "enumerate_walks", "explain", "many_body_expansion", "mobius_inversion", "nbody_decomposition", "nbody_decompositions", "select_walks", "subset_relevance",
           "top_k_walks", "walk_relevance"]
