"""Configuration dataclasses: loop settings, model presets (architecture + input + loops)."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class LoopConfig:
    """Rules of the write and read loops (paper section 3); the learned scalars start here."""
    write_steps: int = 5             # T: gradient steps on the writing loss
    read_steps: int = 5              # K: projected Nesterov steps on the query
    write_rate_init: float = 1e-4    # softplus-positive rate per writable tensor and per loss term
    alpha_init: float = 1.0          # weight of ||grad_x E||^2 in the writing loss
    beta_init: float = 1e-4          # weight of ||theta - theta_bar||^2
    grad_norm_term: bool = True      # False drops the alpha term (no double backward when writing)
    write_reduction: str = "mean"    # "mean" over patterns (paper) or "sum": see model/memory.py
    read_rate_init: float = 1.0      # gamma_1, the first (largest) read step size
    read_decay_init: float = 0.9     # sigmoid(eta_k): gamma_k = gamma_{k-1} * sigmoid(eta_k)
    momentum_init: float = 0.5       # psi_1, Nesterov momentum; psi_k non-increasing like gamma


@dataclass(frozen=True)
class ModelConfig:
    """A named preset: which energy network, on which input, with which loops."""
    name: str
    arch: str                        # key of model.energy.ARCHITECTURES
    input_shape: tuple[int, ...]     # (D,) for binary strings, (C, H, W) for images
    kind: str                        # "binary", "grayscale" or "colour"
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    loop: LoopConfig = field(default_factory=LoopConfig)
    note: str = ""                   # what a CPU-friendly preset trades against the paper's

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["input_shape"] = list(self.input_shape)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        d = dict(d)
        d["input_shape"] = tuple(d["input_shape"])
        d["loop"] = LoopConfig(**d.get("loop", {}))
        return cls(**d)

    def replace(self, **changes: Any) -> ModelConfig:
        loop_changes = {k: changes.pop(k) for k in list(changes) if k in LoopConfig.__dataclass_fields__}
        arch_changes = {k: changes.pop(k) for k in list(changes) if k not in ModelConfig.__dataclass_fields__}
        cfg = dataclasses.replace(self, **changes)
        if loop_changes:
            cfg = dataclasses.replace(cfg, loop=dataclasses.replace(cfg.loop, **loop_changes))
        if arch_changes:
            cfg = dataclasses.replace(cfg, arch_kwargs={**cfg.arch_kwargs, **arch_changes})
        return cfg


def _presets() -> dict[str, ModelConfig]:
    p: list[ModelConfig] = []
    B, G, C = (128,), (1, 32, 32), (3, 32, 32)
    # --- paper architectures, paper sizes -------------------------------------------------------
    p.append(ModelConfig("paper-binary-rnn", "gated_rnn", B, "binary",
                         dict(hidden=1024, memory=63, hops=5)))
    for d in (9, 18, 36, 64):
        p.append(ModelConfig(f"paper-fc-d{d}-gray", "resnet_fc", G, "grayscale", dict(memory=d)))
        p.append(ModelConfig(f"paper-fc-d{d}-colour", "resnet_fc", C, "colour", dict(memory=d)))
    for d in (2, 4, 8, 14):
        p.append(ModelConfig(f"paper-conv-d{d}-gray", "resnet_conv", G, "grayscale", dict(memory=d)))
        p.append(ModelConfig(f"paper-conv-d{d}-colour", "resnet_conv", C, "colour", dict(memory=d)))
    # --- CPU-friendly presets ---------------------------------------------------------------------
    p.append(ModelConfig("binary-rnn-small", "gated_rnn", B, "binary",
                         dict(hidden=256, memory=63, hops=5),
                         note="paper's gated RNN with hidden 256 instead of 1024: same 8,127 memory "
                              "floats, ~1/12 of the static weights and FLOPs"))
    p.append(ModelConfig("binary-hopfield", "quadratic", B, "binary", dict(),
                         LoopConfig(write_steps=5, write_rate_init=1e-3, alpha_init=0.25,
                                    beta_init=1e-3, read_rate_init=1.0, write_reduction="sum"),
                         note="writable symmetric quadratic energy (8,256 floats, the Hopfield "
                              "budget); its writing loss contains the Hebb and delta rules"))
    for rank, tag in ((180, ""), (128, "-r128"), (90, "-r90"), (64, "-r64")):
        loop = LoopConfig(write_steps=5, write_rate_init=1e-3, alpha_init=0.25, beta_init=1e-3,
                          read_rate_init=0.5, write_reduction="sum")
        p.append(ModelConfig(f"characters-subspace{tag}", "subspace_quadratic", G, "binary",
                             dict(rank=rank), loop,
                             note=f"writable symmetric quadratic energy on a learned {rank}-dim pixel "
                                  f"subspace: {rank * (rank + 1) // 2:,} floats; a matrix product per "
                                  "step instead of a deep network"))
        p.append(ModelConfig(f"photos-subspace{tag}", "subspace_quadratic", C, "colour",
                             dict(rank=rank), loop, note="as characters-subspace, for colour images"))
    # slot memories: "slots" write every pattern into a shared softmin (kept for comparison);
    # "indexed" give each pattern slots of its own (64 slots = the protocol's patterns per episode)
    families = (("slots", 128, "shared", 10, ((126, ""), (63, "-r63"), (31, "-r31")),
                 "written by 10 gradient steps on the energy"),
                ("indexed", 64, "indexed", 3, ((252, ""), (126, "-r126"), (63, "-r63")),
                 "each pattern written to slots of its own (3 gradient steps on its distance to them; "
                 "past 64 patterns, pattern i shares slot i mod 64)"))
    for family, slots, assign, steps, ranks, how in families:
        loop = LoopConfig(write_steps=steps, write_rate_init=0.9, alpha_init=0.25, beta_init=1e-4,
                          grad_norm_term=False, write_reduction="sum", read_rate_init=0.25,
                          read_decay_init=0.9, momentum_init=0.1)
        for rank, tag in ranks:
            for task, shape, kind in (("characters", G, "binary"), ("photos", C, "colour")):
                p.append(ModelConfig(f"{task}-{family}{tag}", "subspace_slots", shape, kind,
                                     dict(rank=rank, slots=slots, assign=assign), loop,
                                     note=f"{slots} writable slots in the {rank}-dim principal subspace "
                                          f"({slots * rank:,} floats), {how}; attention recall + residual "
                                          "shrink + quartic overwrite"))
    # distributed span memories: one Hebbian r x r matrix shared by all patterns, recall by a robust fit
    # of the visible pixels within its span (r = 63 / 89 / 126 / 179: 2.0K / 4.0K / 8.0K / 16.1K floats; r = 67 /
    # 95 / 135: 2.3K / 4.6K / 9.2K, the paper's budgets)
    for rank in (63, 67, 89, 95, 126, 135, 179):
        loop = LoopConfig(write_steps=1, write_rate_init=1.0, alpha_init=0.25, beta_init=1e-6,
                          grad_norm_term=False, write_reduction="sum", read_steps=1, read_rate_init=0.25,
                          read_decay_init=0.5, momentum_init=0.01)   # 0.25: one step lands on the recall
        for task, shape, kind in (("characters", G, "binary"), ("photos", C, "colour")):
            # binary images: the window's bits solved from the span's equations (SubspaceSpanEnergy._bit_fit);
            # 500 steps and well 0.002 chosen on the training split (30 episodes of 64 at rank 126: 14.60
            # Hamming; 14.59-15.49 for wells 0.001-0.05 at 1,000 steps, 14.71 at 250, 17.67 without the well;
            # results/explore/characters-span-bit-fit.json, scripts/tune_bit_fit.py)
            bits = dict(bit_fit_steps=500, bit_fit_well=0.002) if kind == "binary" else {}
            p.append(ModelConfig(f"{task}-span-r{rank}", "subspace_span", shape, kind, dict(rank=rank, **bits), loop,
                                 note=f"a Hebbian {rank}x{rank} correlation matrix over {rank}-dim PCA codes "
                                      f"({rank * (rank + 1) // 2:,} floats) shared by every pattern; recall fits "
                                      "the visible pixels within its span"
                                      + (", solves the damaged window's bits from the span's equations" if bits
                                         else "") + " and pulls the damaged window to it"))
    p.append(ModelConfig("conv-small-d8-gray", "resnet_conv", G, "grayscale",
                         dict(memory=8, channels=(16, 32), bottleneck=32, width=64, hidden=256),
                         note="the conv-memory net at half width: 578·d memory floats, ~1/8 FLOPs"))
    p.append(ModelConfig("fc-small-d32-gray", "resnet_fc", G, "grayscale",
                         dict(memory=32, channels=(16, 32, 48), embed=256, hidden=256, head=256),
                         note="the FC-memory net at half width: 257·d memory floats, ~1/4 FLOPs"))
    return {c.name: c for c in p}


PRESETS: dict[str, ModelConfig] = _presets()


def parse_value(text: str) -> Any:
    """A command-line override value: JSON where it parses (numbers, true/false, lists), else the text."""
    try:
        v = json.loads(text)
    except json.JSONDecodeError:
        return text
    return tuple(v) if isinstance(v, list) else v


def get_preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]
