"""Checkpoints: weights as safetensors plus a JSON card; loading refuses a card that does not match."""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .config import ModelConfig
from .memory import EBMM

CARD_VERSION = 1
WEIGHTS, CARD = "model.safetensors", "card.json"


class CheckpointError(ValueError):
    """A checkpoint folder that is missing, damaged, or whose card does not match its weights."""


@dataclass
class Checkpoint:
    name: str
    model: EBMM
    card: dict[str, Any]
    sha256: str            # of the weights file: sessions record it, so stale sessions are detected


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_checkpoint(model: EBMM, folder: str | Path, **card_fields: Any) -> Path:
    """Write folder/model.safetensors and folder/card.json (card_fields: training, evaluation, ...)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {n: t.detach().cpu().contiguous() for n, t in model.state_dict().items()}
    tmp = folder / (WEIGHTS + ".tmp")
    # one metadata key: safetensors writes several in a random order, and the file's hash must be stable
    save_file(tensors, str(tmp), metadata={"config": json.dumps(model.cfg.to_dict(), sort_keys=True)})
    tmp.chmod(0o644)                       # safetensors writes 0600; servers run as other users
    tmp.replace(folder / WEIGHTS)
    old = read_card(folder) if (folder / CARD).exists() else {}
    digest = _sha256(folder / WEIGHTS)
    if old.get("weights_sha256") != digest:
        old.pop("evaluation", None)        # results measured on other weights do not carry over
    card = {
        **old,
        "card_version": CARD_VERSION,
        "name": card_fields.pop("name", old.get("name", folder.name)),
        "config": model.cfg.to_dict(),
        "architecture": model.cfg.arch,
        "input_shape": list(model.cfg.input_shape),
        "kind": model.cfg.kind,
        "memory_floats": model.memory_floats,
        "capacity_patterns": model.capacity,
        "parameters": sum(t.numel() for t in tensors.values()),
        "tensors": {n: list(t.shape) for n, t in tensors.items()},
        "weights_sha256": digest,
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **card_fields,
    }
    (folder / CARD).write_text(json.dumps(card, indent=2, sort_keys=False) + "\n")
    return folder


def update_card(folder: str | Path, **fields: Any) -> Path:
    """Set fields of a checkpoint's card (evaluation, familiarity, ...) without touching its weights,
    so that the weights' hash, and everything measured on them, stays valid."""
    folder = Path(folder)
    card = read_card(folder)
    if card.get("weights_sha256") != _sha256(folder / WEIGHTS):
        raise CheckpointError(f"{folder}: the card does not describe these weights; re-save the checkpoint")
    card.update(fields)
    tmp = folder / (CARD + ".tmp")
    tmp.write_text(json.dumps(card, indent=2, sort_keys=False) + "\n")
    tmp.replace(folder / CARD)
    return folder


def read_card(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / CARD
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        where = "has no card.json" if Path(folder).is_dir() else "does not exist"
        raise CheckpointError(f"checkpoint folder {str(folder)!r} {where}; a checkpoint is a folder with "
                              f"model.safetensors and card.json (shipped ones: checkpoints/NAME; "
                              f"train one with `ebmm train`)") from e
    except json.JSONDecodeError as e:
        raise CheckpointError(f"card {path} is not valid JSON: {e}") from e


def load_checkpoint(folder: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Build the model the card describes and load its weights; refuse any mismatch."""
    folder = Path(folder)
    card = read_card(folder)
    if card.get("card_version") != CARD_VERSION:
        raise CheckpointError(f"{folder}: card_version {card.get('card_version')!r}, expected {CARD_VERSION}")
    wpath = folder / WEIGHTS
    if not wpath.exists():
        raise CheckpointError(f"{folder}: no {WEIGHTS}")
    digest = _sha256(wpath)
    if card.get("weights_sha256") != digest:
        raise CheckpointError(f"{folder}: weights sha256 {digest[:12]} does not match the card's "
                              f"{str(card.get('weights_sha256'))[:12]}")
    try:
        cfg = ModelConfig.from_dict(card["config"])
        model = EBMM(cfg)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{folder}: card config cannot build a model: {e}") from e
    with safe_open(str(wpath), "pt") as f:
        meta = f.metadata() or {}
    if meta.get("config") is not None and json.loads(meta["config"]) != json.loads(json.dumps(cfg.to_dict())):
        raise CheckpointError(f"{folder}: the card's config differs from the one saved with the weights")
    for key, value in (("architecture", cfg.arch), ("input_shape", list(cfg.input_shape)), ("kind", cfg.kind)):
        if card.get(key) != value:
            raise CheckpointError(f"{folder}: card says {key}={card.get(key)!r}, its config says {value!r}")
    tensors = load_file(str(wpath))
    expected = {n: list(t.shape) for n, t in model.state_dict().items()}
    got = {n: list(t.shape) for n, t in tensors.items()}
    if expected != got:
        diff = sorted(n for n in set(expected) | set(got) if expected.get(n) != got.get(n))
        raise CheckpointError(f"{folder}: tensors do not match the card's architecture: {diff[:5]}")
    if card.get("memory_floats") != model.memory_floats:
        raise CheckpointError(f"{folder}: card says memory_floats={card.get('memory_floats')}, "
                              f"the architecture has {model.memory_floats}")
    model.load_state_dict(tensors)
    model.to(device).eval()
    for t in model.parameters():
        t.requires_grad_(False)
    return Checkpoint(card.get("name", folder.name), model, card, digest)


def find_checkpoints(root: str | Path) -> list[Path]:
    """Every folder under root (one level) that holds a card."""
    root = Path(root)
    return sorted(p.parent for p in root.glob(f"*/{CARD}"))
