"""Message-passing potentials (SchNet, PaiNN) as pure functions of parameters."""

from jaxrel.models.potential import ARCHITECTURES, ModelConfig, Potential

__all__ = ["ARCHITECTURES", "ModelConfig", "Potential"]
