"""The models the service serves: every checkpoint under the checkpoint folder, loaded once."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from model.checkpoint import CheckpointError, find_checkpoints, load_checkpoint
from model.serving import Memory

log = logging.getLogger("uvicorn.error.ebmm")


class StartupError(RuntimeError):
    """The service cannot start: nothing to serve."""


@dataclass
class LoadedModel:
    name: str
    memory: Memory
    card: dict[str, Any]
    sha256: str

    @property
    def kind(self) -> str:
        return str(self.card.get("kind") or self.memory.ckpt.model.cfg.kind)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.memory.input_shape

    @property
    def is_image(self) -> bool:
        return len(self.input_shape) == 3

    @property
    def default_read_steps(self) -> int:
        return self.memory.ckpt.model.cfg.loop.read_steps

    @property
    def write_steps(self) -> int:
        return self.memory.ckpt.model.cfg.loop.write_steps


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _warm_up(m: LoadedModel) -> None:
    """One tiny write and read, so the first request pays no one-off cost."""
    x = torch.zeros(1, *m.input_shape)
    res = m.memory.write(x)
    m.memory.read(res.weights, x, steps=1)


def load_models(folder: Path, device: torch.device) -> dict[str, LoadedModel]:
    """Load every checkpoint in folder; skip (and log) broken ones; refuse to start with none."""
    folder = Path(folder)
    models: dict[str, LoadedModel] = {}
    problems: list[str] = []
    for path in find_checkpoints(folder):
        try:
            ckpt = load_checkpoint(path, device)
        except CheckpointError as e:
            problems.append(str(e))
            log.error("skipping checkpoint %s: %s", path, e)
            continue
        if ckpt.name in models:
            problems.append(f"{path}: duplicate model name {ckpt.name!r}")
            continue
        models[ckpt.name] = LoadedModel(ckpt.name, Memory(ckpt), ckpt.card, ckpt.sha256)
        _warm_up(models[ckpt.name])
        log.info("loaded model %s (%s, %s) from %s on %s", ckpt.name, models[ckpt.name].kind,
                 models[ckpt.name].input_shape, path, device)
    if not models:
        why = "; ".join(problems) if problems else "no sub-folder holds a card.json"
        raise StartupError(f"no checkpoint could be loaded from {folder}: {why}")
    return models


def pick_default(models: dict[str, LoadedModel], wanted: str) -> str:
    return wanted if wanted in models else next(iter(models))
