"""The models the service serves: every checkpoint under the checkpoint folder, loaded once."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from model import compiled
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


def _compile_reads(m: LoadedModel) -> None:
    """Compile m's 1-query reads (model/compiled.py) and check each kind a retrieve of the model's own number of
    steps makes (masked or not, every iterate's energy or the last's) once now, on random patterns; then compile
    no more, so that no request waits for a compile (a retrieve asking for other steps reads eagerly)."""
    kinds = compiled.enable(m.memory.ckpt.model)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, *m.input_shape, generator=g)
    if m.kind == "binary":
        x = x.round()
    w = m.memory.write(x.to(m.memory.device)).weights
    q = x[:1].to(m.memory.device)
    mask = (torch.rand(q.shape, generator=g) < 0.5).to(m.memory.device)
    for mk in (None, mask):
        for energies in ("all", "last"):
            m.memory.read(w, q, mk, energies=energies)
    kinds.freeze()          # other kinds (another number of steps) read eagerly: no request waits for a compile
    for k in kinds.summary():
        log.info("model %s: compiled read of %d %s (energies %s): %s in %.1f s%s", m.name, k["batch"],
                 "masked query" if k["masked"] else "query", k["energies"], k["status"], k["seconds"],
                 f" ({k['reason']})" if k["reason"] else "")


def compile_names(setting: str, names: list[str]) -> list[str]:
    """EBMM_COMPILE_READS ("", "all", or comma-separated names, any case) -> the loaded models it names; "all"
    among names means all; a name not loaded is warned of."""
    wanted = [n.strip().lower() for n in setting.split(",") if n.strip()]
    if "all" in wanted:
        return list(names)
    lower = {n.lower(): n for n in names}
    for n in wanted:
        if n not in lower:
            log.warning("EBMM_COMPILE_READS names %r, which is not loaded; loaded: %s", n, ", ".join(names))
    return [n for n in names if n.lower() in wanted]


def load_models(folder: Path, device: torch.device, compile_reads: str = "") -> dict[str, LoadedModel]:
    """Load every checkpoint in folder; skip (and log) broken ones; refuse to start with none. compile_reads:
    the models whose 1-query reads run compiled (`compile_names`)."""
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
    for name in compile_names(compile_reads, list(models)):
        _compile_reads(models[name])
    return models


def pick_default(models: dict[str, LoadedModel], wanted: str) -> str:
    return wanted if wanted in models else next(iter(models))
