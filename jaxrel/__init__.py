"""jaxrel: explain machine-learned interatomic potentials with relevant walks (GNN-LRP).

Package layers (arrows point one way): ``nn`` (rule-aware layers) ← ``models`` ←
``relevance`` (walks, n-body terms, :func:`explain`) ← ``analysis`` ← ``cli``; ``graph``,
``geometry`` and ``data`` sit below them all.
"""

from jaxrel.graph import Graph, build_graphs
from jaxrel.models import ModelConfig, Potential
from jaxrel.relevance import Explanation, Table, explain
from jaxrel.version import __version__

__all__ = ["__version__", "Explanation", "Graph", "ModelConfig", "Potential", "Table", "build_graphs", "explain"]
