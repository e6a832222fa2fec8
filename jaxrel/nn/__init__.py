"""What the models are made of: rule-aware layers, activations, radial bases, cutoffs.

Nothing here knows the relevance engine. A :class:`RuleSet` is static data that a model's
forward pass routes every node-path nonlinearity through; the relevance engine
(:mod:`jaxrel.relevance`) chooses the rule set and reads gradient × input.
"""

from jaxrel.nn.functional import cosine_cutoff, gaussian_rbf, safe_norm, shifted_softplus, sinc_rbf
from jaxrel.nn.layers import MLP
from jaxrel.nn.rules import RULE_NAMES, RULES, RuleSet, resolve_rules

__all__ = ["MLP", "RULES", "RULE_NAMES", "RuleSet", "cosine_cutoff", "gaussian_rbf", "resolve_rules",
           "safe_norm", "shifted_softplus", "sinc_rbf"]
