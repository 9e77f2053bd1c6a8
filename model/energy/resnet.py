"""The paper's image energies: ResNet trunks with a writable fully connected or convolutional slice."""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import EnergyNet, Params, _conv, _linear, _signed, conv, layer_norm, lin


# --------------------------------------------------------------------------------------------------
# images: ResNet encoders
# --------------------------------------------------------------------------------------------------

def _resblock_init(m: nn.Module, name: str, c_in: int, c_out: int) -> None:
    _conv(m, f"{name}.a", c_in, c_out, 3)
    _conv(m, f"{name}.b", c_out, c_out, 3, gain=0.5)
    _conv(m, f"{name}.skip", c_in, c_out, 1, gain=1.0)


def _resblock(p: Params, name: str, x: Tensor) -> Tensor:
    """3x3 stride-2 conv, 3x3 conv, plus a 1x1 stride-2 skip; smooth activations (second order)."""
    h = conv(p, f"{name}_b", F.silu(conv(p, f"{name}_a", x, stride=2)))
    return F.silu(h + conv(p, f"{name}_skip", x, stride=2))


class ResNetFCEnergy(EnergyNet):
    """ResBlocks -> Linear(embed) -> LayerNorm -> tanh([memory(d), static(hidden-d)]) -> gated hops."""

    def __init__(self, input_shape: tuple[int, ...], memory: int = 32,
                 channels: tuple[int, ...] = (32, 64, 96), embed: int = 256, hidden: int = 512,
                 head: int = 1024, hops: int = 3, scale: float = 1.0):
        super().__init__()
        c, h, w = input_shape
        self.input_shape, self.hops, self.channels = tuple(input_shape), hops, tuple(channels)
        for i, c_out in enumerate(channels):
            _resblock_init(self, f"res{i}", c if i == 0 else channels[i - 1], c_out)
        flat = channels[-1] * (h >> len(channels)) * (w >> len(channels))
        _linear(self, "embed", flat, embed)
        self.embed_ln = nn.Parameter(torch.ones(embed))
        _linear(self, "memory", embed, memory, gain=1.0)       # writable: (embed + 1) * d
        _linear(self, "static", embed, hidden - memory, gain=1.0)
        _linear(self, "cell", 2 * hidden, hidden, gain=1.0)
        _linear(self, "gate", 2 * hidden, hidden, gain=1.0)
        _linear(self, "proj", hidden, head, gain=1.0)
        _linear(self, "out", head, 1, gain=1.0)
        self._init_scale(scale)

    def energy(self, p: Params, x: Tensor) -> Tensor:
        return self.energy_from_features(p, self.static_features(p, x))

    def static_features(self, p: Params, x: Tensor) -> tuple[Tensor, Tensor]:
        """The trunk's embedding f and the static part of the layer the memory belongs to."""
        h = _signed(x)
        for i in range(len(self.channels)):
            h = _resblock(p, f"res{i}", h)                     # (B, C_i, H/2^i, W/2^i)
        f = layer_norm(lin(p, "embed", h.flatten(1)), 1, p["embed_ln"])
        return f, lin(p, "static", f)

    def energy_from_features(self, p: Params, feats: tuple[Tensor, Tensor]) -> Tensor:
        f, static = feats
        inp = torch.tanh(torch.cat([lin(p, "memory", f), static], dim=-1))  # (B, hidden)
        state = torch.zeros_like(inp)
        for _ in range(self.hops):
            z = torch.cat([inp, state], dim=-1)                # (B, 2*hidden)
            c = torch.tanh(layer_norm(lin(p, "cell", z), 1))
            u = torch.sigmoid(lin(p, "gate", z))
            state = u * c + (1 - u) * state
        return self.head(p, torch.tanh(lin(p, "proj", state)))


class ResNetConvEnergy(EnergyNet):
    """ResBlocks -> two bottleneck blocks whose 3x3 conv is [memory Conv(d), static Conv(width-d)]
    with LayerNorm + tanh and a 1x1 (+avg-pool) residual -> convolutional gated hops -> MLP head."""

    def __init__(self, input_shape: tuple[int, ...], memory: int = 8,
                 channels: tuple[int, ...] = (32, 64), width: int = 128, bottleneck: int = 64,
                 hidden: int = 1024, hops: int = 3, scale: float = 1.0):
        super().__init__()
        c, h, w = input_shape
        self.input_shape, self.hops, self.channels = tuple(input_shape), hops, tuple(channels)
        for i, c_out in enumerate(channels):
            _resblock_init(self, f"res{i}", c if i == 0 else channels[i - 1], c_out)
        c_prev = channels[-1]
        for j in range(2):
            _conv(self, f"bn{j}.reduce", c_prev, bottleneck, 1)
            _conv(self, f"memory{j}", bottleneck, memory, 3, gain=1.0)   # writable: 9*bneck*d + d
            _conv(self, f"bn{j}.static", bottleneck, width - memory, 3, gain=1.0)
            _conv(self, f"bn{j}.skip", c_prev, width, 1, gain=1.0)
            c_prev = width
        _conv(self, "cell", 2 * width, width, 3, gain=1.0)
        _conv(self, "gate", 2 * width, width, 3, gain=1.0)
        side = (h >> len(channels)) // 2
        _linear(self, "proj", width * side * side, hidden, gain=1.0)
        _linear(self, "out", hidden, 1, gain=1.0)
        self._init_scale(scale)

    def _bottleneck_static(self, p: Params, j: int, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The parts of bottleneck j that do not involve its memory conv: its reduced input, static conv, skip."""
        r = F.silu(conv(p, f"bn{j}_reduce", x))                                  # (B, bneck, h, w)
        return r, conv(p, f"bn{j}_static", r), conv(p, f"bn{j}_skip", x)

    def _bottleneck_rest(self, p: Params, j: int, parts: tuple[Tensor, Tensor, Tensor], down: bool) -> Tensor:
        r, static, skip = parts
        h = torch.cat([conv(p, f"memory{j}", r), static], dim=1)                 # (B, width, h, w)
        h = torch.tanh(layer_norm(h, 3))
        if down:
            h, skip = F.avg_pool2d(h, 2), F.avg_pool2d(skip, 2)
        return h + skip

    def energy(self, p: Params, x: Tensor) -> Tensor:
        return self.energy_from_features(p, self.static_features(p, x))

    def static_features(self, p: Params, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The ResBlocks' output through the first bottleneck's static parts (the first memory conv is next)."""
        h = _signed(x)
        for i in range(len(self.channels)):
            h = _resblock(p, f"res{i}", h)
        return self._bottleneck_static(p, 0, h)

    def energy_from_features(self, p: Params, feats: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        h = self._bottleneck_rest(p, 0, feats, down=False)
        inp = self._bottleneck_rest(p, 1, self._bottleneck_static(p, 1, h), down=True)   # (B, width, 4, 4)
        state = torch.zeros_like(inp)
        for _ in range(self.hops):
            z = torch.cat([inp, state], dim=1)                  # (B, 2*width, 4, 4)
            c = torch.tanh(layer_norm(conv(p, "cell", z), 3))
            u = torch.sigmoid(conv(p, "gate", z))
            state = u * c + (1 - u) * state
        return self.head(p, torch.tanh(lin(p, "proj", state.flatten(1))))
