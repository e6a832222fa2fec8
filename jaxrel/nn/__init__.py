"""What the models are made of: rule-aware layers, activations, radial bases, cutoffs.

Nothing here imports the explainer. A :class:`RuleSet` is static data, passed to a model's
forward pass as an argument, that every node-path nonlinearity is routed through; whoever
evaluates the model (training: the identity rule; attribution: GI, LRP-ε, LRP-γ) chooses it.
"""

from jaxrel.nn.functional import cosine_cutoff, gaussian_rbf, safe_norm, shifted_softplus, sinc_rbf, unit_vectors
from jaxrel.nn.layers import MLP
from jaxrel.nn.rules import RULE_NAMES, RULES, RuleSet, resolve_rules

__all__ = ["MLP", "RULES", "RULE_NAMES", "RuleSet", "cosine_cutoff", "gaussian_rbf", "resolve_rules",
           "safe_norm", "shifted_softplus", "sinc_rbf", "unit_vectors"]
