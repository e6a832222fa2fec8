"""Relevance engine: propagation rules (forward substitution) for GNN-LRP."""

from jaxrel.relevance.rules import RULES, RuleSet, apply_mask

__all__ = ["RULES", "RuleSet", "apply_mask"]
