"""Energy networks E(x; theta) -> (B,), written as pure functions of an explicit parameter dict.

One module per family: `base` (the EnergyNet contract and layer helpers), `binary` (gated RNN,
writable quadratic), `subspace` (principal-subspace quadratic, slot and span memories), `resnet` (the
paper's ResNet energies: deep, distributed image memories).
"""
from __future__ import annotations

from .base import EnergyNet, Params, inv_softplus, layer_norm, principal_basis, symmetric_from_triu
from .binary import GatedRNNEnergy, QuadraticEnergy
from .resnet import ResNetConvEnergy, ResNetFCEnergy
from .subspace import SubspaceQuadraticEnergy, SubspaceSlotEnergy, SubspaceSpanEnergy

ARCHITECTURES: dict[str, type[EnergyNet]] = {
    "gated_rnn": GatedRNNEnergy,
    "quadratic": QuadraticEnergy,
    "subspace_quadratic": SubspaceQuadraticEnergy,
    "subspace_slots": SubspaceSlotEnergy,
    "resnet_fc": ResNetFCEnergy,
    "resnet_conv": ResNetConvEnergy,
    "subspace_span": SubspaceSpanEnergy,
}

__all__ = ["ARCHITECTURES", "EnergyNet", "GatedRNNEnergy", "Params", "QuadraticEnergy", "ResNetConvEnergy",
           "ResNetFCEnergy", "SubspaceQuadraticEnergy", "SubspaceSlotEnergy", "SubspaceSpanEnergy", "inv_softplus",
           "layer_norm", "principal_basis", "symmetric_from_triu"]
