"""jaxrel: explain machine-learned interatomic potentials with relevant walks (GNN-LRP)."""

from jaxrel.graph import Graph, build_graphs
from jaxrel.models import ModelConfig, Potential

__all__ = ["Graph", "ModelConfig", "Potential", "build_graphs"]
__version__ = "0.1.0"
