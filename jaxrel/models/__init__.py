"""Potentials (message-passing SchNet and PaiNN, and the body-ordered reference model) as
pure functions of parameters."""

from jaxrel.models.potential import ARCHITECTURES, ModelConfig, Potential

__all__ = ["ARCHITECTURES", "ModelConfig", "Potential"]
