"""Energy networks E(x; theta) -> (B,), written as pure functions of an explicit parameter dict.

One module per family: `base` (the EnergyNet contract and layer helpers), `binary` (gated RNN,
writable quadratic), `subspace` (principal-subspace quadratic and slot memories), `resnet` (the
paper's ResNet energies: deep, distributed image memories).
"""
from __future__ import annotations

from .base import EnergyNet, Params, inv_softplus, layer_norm, principal_basis, symmetric_from_triu
from .binary import GatedRNNEnergy, QuadraticEnergy
from .resnet import ResNetConvEnergy, ResNetFCEnergy
from .subspace import SubspaceQuadraticEnergy, SubspaceSlotEnergy

ARCHITECTURES: dict[str, type[EnergyNet]] = {
    "gated_rnn": GatedRNNEnergy,
    "quadratic": QuadraticEnergy,
    "subspace_quadratic": SubspaceQuadraticEnergy,
    "subspace_slots": SubspaceSlotEnergy,
    "resnet_fc": ResNetFCEnergy,
    "resnet_conv": ResNetConvEnergy,
}

__all__ = ["ARCHITECTURES", "EnergyNet", "GatedRNNEnergy", "Params", "QuadraticEnergy", "ResNetConvEnergy",
           "ResNetFCEnergy", "SubspaceQuadraticEnergy", "SubspaceSlotEnergy", "inv_softplus", "layer_norm",
           "principal_basis", "symmetric_from_triu"]
