"""Meta-training loop: episodes -> meta-loss through both loops -> AdamW; checkpoints, exact resume, logs.

Resume state (optimizer moments, RNG, step) lives outside the repo (default ~/.cache/ebmm/runs/NAME);
only the shipped weights and card are written to the output checkpoint folder.
"""
from __future__ import annotations

import json
import math
import os
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from . import distortions
from .checkpoint import load_checkpoint, save_checkpoint
from .config import ModelConfig, get_preset
from .memory import EBMM
from .meta import Distill, meta_loss

Sampler = Callable[[int, int, torch.Generator], Tensor]   # (episodes, N, gen) -> (M, N, *S)


@dataclass
class TrainConfig:
    preset: str = "binary-hopfield"
    task: str = "binary"                  # "binary" (random strings) or a dataset name from model.data
    distortion: str = "flip:16"           # model.distortions spec(s) for the queries; "a,b" cycles
    patterns: tuple[int, ...] = (16, 32, 48, 64, 96)   # N per episode, cycled (a curriculum over loads)
    meta_batch: int = 4                   # episodes per outer step
    steps: int = 1000
    lr: float = 5e-5                      # paper: AdamW 5e-5
    loop_lr: float = 1e-2                 # the loops' scalars learn well only with a higher rate
    weight_decay: float = 1e-6
    clip: float = 0.05                    # global grad-norm clip (paper)
    stepwise: bool = True                 # loss on every read iterate (paper) or only the last
    seed: int = 0
    threads: int = 0                      # torch CPU threads; 0 = torch's default
    checkpoint_every: int = 100
    out: str = "checkpoints/run"
    state_dir: str = ""                   # resume state; default ~/.cache/ebmm/runs/<out name>
    init: str = ""                        # warm start from a checkpoint folder
    overrides: dict = field(default_factory=dict)   # ModelConfig / LoopConfig / arch overrides
    read_queries: int = 0                 # meta-loss on this many of the N queries (0 = all)
    train_read_steps: int = 0             # K in the meta-loss (0 = the model's); serving keeps the model's
    stages: str = ""                      # curriculum "STEP:N:DISTORTION;..." (replaces the cycling)
    device: str = "cpu"                   # where the loops run; data, RNG and saved state stay on the CPU
    segment_seconds: float = 0.0          # stop (and checkpoint) once this invocation has trained this long;
                                          # 0 = run to `steps`. A long run is several segments, each resumed
    autoencoder_seconds: float = 0.0      # warm start: train the trunk as an autoencoder's encoder on the
                                          # training images this long before step 0 (model/warm_start.py)
    distill: str = ""                     # a teacher checkpoint folder: its read trajectories supervise the
                                          # model's read steps (model/meta.py: Distill) for the first steps
    distill_weight: float = 1.0           # the distillation term's weight in the meta-loss
    distill_steps: int = 0                # meta-steps with the term on (0 = every step); the rest fine-tune
                                          # on the meta-loss alone
    distill_states: int = 3               # teacher read states per query that supervise a model read step

    def resolved_state_dir(self) -> Path:
        return Path(self.state_dir or Path.home() / ".cache" / "ebmm" / "runs" / Path(self.out).name)


def make_sampler(task: str) -> Sampler:
    """Episodes of training patterns for a task: random strings, or images of a dataset's train split."""
    if task == "binary":
        def sample(m: int, n: int, g: torch.Generator) -> Tensor:
            return (torch.rand(m, n, 128, generator=g) < 0.5).float()     # (M, N, D)
        return sample
    from . import data
    ds = data.load(task, "train")

    def sample_images(m: int, n: int, g: torch.Generator) -> Tensor:
        return data.sample_episodes(ds, n, m, g)                           # (M, N, C, H, W)
    return sample_images


def build_model(cfg: TrainConfig) -> EBMM:
    if cfg.init:
        if cfg.autoencoder_seconds > 0:
            raise ValueError(f"autoencoder_seconds={cfg.autoencoder_seconds} with init={cfg.init!r}: a warm start "
                             "from a checkpoint keeps its trunk; drop one of the two")
        if cfg.overrides:
            raise ValueError(f"init={cfg.init!r} with overrides {sorted(cfg.overrides)}: a warm start keeps "
                             "the checkpoint's architecture and loops; drop the overrides")
        model = load_checkpoint(cfg.init).model
        for t in model.parameters():
            t.requires_grad_(True)
        return model.train()
    mcfg: ModelConfig = get_preset(cfg.preset).replace(**cfg.overrides)
    return EBMM(mcfg)


def make_optimizer(model: EBMM, cfg: TrainConfig) -> torch.optim.Optimizer:
    loop = [t for n, t in model.named_parameters() if n.startswith("loop.")]
    net = [t for n, t in model.named_parameters() if not n.startswith("loop.")]
    return torch.optim.AdamW([{"params": net, "lr": cfg.lr}, {"params": loop, "lr": cfg.loop_lr}],
                             weight_decay=cfg.weight_decay)


# --------------------------------------------------------------------------------------------------
# resume state: model + optimizer moments + RNG + counters, as safetensors (never pickle)
# --------------------------------------------------------------------------------------------------

def save_state(path: Path, model: EBMM, opt: torch.optim.Optimizer, gen: torch.Generator,
               info: dict) -> None:
    path.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{n}": t.detach().cpu().contiguous() for n, t in model.state_dict().items()}
    for i, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            tensors[f"opt.{i}.{k}"] = v.detach().cpu().contiguous() if torch.is_tensor(v) else torch.tensor(float(v))
    tensors["rng"] = gen.get_state()
    save_file(tensors, str(path / "state.safetensors.tmp"))
    (path / "state.safetensors.tmp").replace(path / "state.safetensors")
    (path / "state.json").write_text(json.dumps(info, indent=1))


def load_state(path: Path, model: EBMM, opt: torch.optim.Optimizer, gen: torch.Generator) -> dict:
    tensors = load_file(str(path / "state.safetensors"))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    sd = opt.state_dict()
    state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, i, name = k.split(".", 2)
            state.setdefault(int(i), {})[name] = v
    sd["state"] = state
    opt.load_state_dict(sd)
    gen.set_state(tensors["rng"])
    return json.loads((path / "state.json").read_text())


# --------------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------------

def train(cfg: TrainConfig, command: str | None = None, progress: bool = True,
          on_checkpoint: Callable[[EBMM, dict], dict] | None = None) -> EBMM:
    """Meta-train (resuming from cfg's state dir when present); returns the trained model."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).train()
    gen = torch.Generator().manual_seed(cfg.seed)
    sample = make_sampler(cfg.task)
    if not cfg.init and hasattr(model.energy, "data_init"):
        model.energy.data_init(sample(64, 256, torch.Generator().manual_seed(cfg.seed + 1)).flatten(0, 1))
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          "cpu" if cfg.device == "auto" else cfg.device)
    model.to(device)
    opt = make_optimizer(model, cfg)
    state_dir = cfg.resolved_state_dir()
    info = {"step": 0, "seconds": 0.0, "config": _jsonable(asdict(cfg))}
    if cfg.autoencoder_seconds > 0 and not (state_dir / "state.safetensors").exists():
        from . import data
        from .warm_start import autoencode_trunk
        ws = autoencode_trunk(model, data.load(cfg.task, "train").images.to(device), seconds=cfg.autoencoder_seconds,
                              seed=cfg.seed)
        info["warm_start"] = ws.summary()
        _log(progress, f"warm start: {info['warm_start']}")
    if (state_dir / "state.safetensors").exists():
        current = info["config"]
        info = load_state(state_dir, model, opt, gen)
        _check_same_run(state_dir, info["config"], current)
        info["config"] = current
        _log(progress, f"resumed {state_dir} at step {info['step']}")
        _truncate_log(state_dir / "metrics.jsonl", info["step"])
    distorts = [distortions.parse(s) for s in cfg.distortion.split(",")]
    log_path = state_dir / "metrics.jsonl"
    state_dir.mkdir(parents=True, exist_ok=True)
    bar = _bar(progress, cfg.steps, info["step"])
    command = command or " ".join(shlex.quote(a) for a in sys.argv)
    stages = parse_stages(cfg.stages)
    teacher, distill_card = None, None
    if cfg.distill:
        tc = load_checkpoint(cfg.distill)
        if tuple(tc.model.cfg.input_shape) != tuple(model.cfg.input_shape):
            raise ValueError(f"distill={cfg.distill!r}: the teacher reads {tuple(tc.model.cfg.input_shape)}, "
                             f"the model {tuple(model.cfg.input_shape)}")
        teacher = Distill(tc.model.to(device), cfg.distill_weight, cfg.distill_states)
        distill_card = {"teacher": cfg.distill, "teacher_sha256": tc.sha256, "weight": cfg.distill_weight,
                        "steps": cfg.distill_steps, "states": cfg.distill_states}
    segment_start = time.perf_counter()
    while info["step"] < cfg.steps:
        t0 = time.perf_counter()
        if stages:
            n, distort = stage_at(stages, info["step"])
        else:
            n = cfg.patterns[info["step"] % len(cfg.patterns)]
            distort = distorts[(info["step"] // len(cfg.patterns)) % len(distorts)]
        x = sample(cfg.meta_batch, n, gen)                                   # (M, N, *S)
        q = distort(x.flatten(0, 1), gen).x.view_as(x)
        x, q = x.to(device), q.to(device)
        d = teacher if teacher is not None and (not cfg.distill_steps or info["step"] < cfg.distill_steps) else None
        ml = meta_loss(model, x, q, cfg.stepwise, cfg.read_queries or None, cfg.train_read_steps or None, d)
        opt.zero_grad(set_to_none=True)
        ml.loss.backward()
        gnorm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip))
        if math.isfinite(gnorm):
            opt.step()
        dt = time.perf_counter() - t0
        info["step"] += 1
        info["seconds"] += dt
        row = {"step": info["step"], "n": n, "loss": float(ml.loss.detach()), "final_error": ml.final_error,
               "query_error": ml.query_error, "grad_norm": gnorm, "seconds": round(info["seconds"], 2),
               "episodes_per_s": cfg.meta_batch / dt, **({"distill_error": ml.distill_error} if d else {})}
        with open(log_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if bar is not None:
            bar.update(1)
            bar.set_postfix(n=n, loss=f"{row['loss']:.3g}", err=f"{ml.final_error:.3g}",
                            q=f"{ml.query_error:.3g}", eps=f"{row['episodes_per_s']:.1f}")
        segment_done = bool(cfg.segment_seconds) and time.perf_counter() - segment_start >= cfg.segment_seconds
        if info["step"] % cfg.checkpoint_every == 0 or info["step"] == cfg.steps or segment_done:
            _checkpoint(model, opt, gen, cfg, info, state_dir, command, on_checkpoint, distill_card)
        if segment_done and info["step"] < cfg.steps:
            _log(progress, f"segment of {cfg.segment_seconds:g} s done at step {info['step']}; "
                           "the same command resumes it")
            break
    if bar is not None:
        bar.close()
    if not (Path(cfg.out) / "card.json").exists():       # resumed a finished run into an empty folder
        _checkpoint(model, opt, gen, cfg, info, state_dir, command, on_checkpoint, distill_card)
    return model


def parse_stages(text: str) -> list[tuple[int, int, distortions.Distortion]]:
    """ "0:16:block:8;500:32:block:12" -> [(0, 16, block 8), (500, 32, block 12)]: from each step on,
    episodes of N patterns with that distortion (a curriculum on the load and the occlusion)."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        step, n, spec = part.split(":", 2)
        out.append((int(step), int(n), distortions.parse(spec)))
    if out and out[0][0] != 0:
        raise ValueError(f"stages={text!r}: the first stage must start at step 0")
    return sorted(out, key=lambda s: s[0])


def stage_at(stages: list[tuple[int, int, distortions.Distortion]], step: int) -> tuple[int, distortions.Distortion]:
    current = stages[0]
    for s in stages:
        if s[0] <= step:
            current = s
    return current[1], current[2]


# what may change between the run that saved a state and the one that resumes it
_RESUMABLE = {"steps", "checkpoint_every", "threads", "out", "state_dir", "device", "segment_seconds"}


def _check_same_run(state_dir: Path, saved: dict, now: dict) -> None:
    defaults = _jsonable(asdict(TrainConfig()))      # a setting added since the state was saved has its default
    diff = sorted(k for k in set(saved) | set(now)
                  if k not in _RESUMABLE and saved.get(k, defaults.get(k)) != now.get(k, defaults.get(k)))
    if diff:
        raise ValueError(f"{state_dir} holds a run with other settings ({', '.join(diff)}): "
                         f"{ {k: saved.get(k) for k in diff} } vs { {k: now.get(k) for k in diff} }; "
                         "pass another --state-dir or delete that folder to start afresh")


def _truncate_log(path: Path, step: int) -> None:
    """Drop the rows logged after the state that was resumed (they will be logged again)."""
    if path.exists():
        rows = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
        path.write_text("".join(r + "\n" for r in rows))


def _checkpoint(model, opt, gen, cfg, info, state_dir, command, on_checkpoint, distill_card=None) -> None:
    save_state(state_dir, model, opt, gen, info)
    extra = on_checkpoint(model, info) if on_checkpoint else {}
    save_checkpoint(model, cfg.out, name=Path(cfg.out).name, training={
        "preset": model.cfg.name, "task": cfg.task, "distortion": cfg.distortion,
        "patterns": list(cfg.patterns), "meta_batch": cfg.meta_batch, "stages": cfg.stages,
        "read_queries": cfg.read_queries, "train_read_steps": cfg.train_read_steps, "steps": info["step"],
        **({"distill": distill_card} if distill_card else {}),
        "cpu_seconds": round(info["seconds"] * (cfg.threads or torch.get_num_threads()), 1),
        "wall_seconds": round(info["seconds"], 1), "threads": cfg.threads or torch.get_num_threads(),
        "optimizer": {"name": "AdamW", "lr": cfg.lr, "loop_lr": cfg.loop_lr,
                      "weight_decay": cfg.weight_decay, "clip": cfg.clip},
        "seed": cfg.seed, "init": cfg.init, "command": command, "host": os.uname().machine,
    }, **extra)


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=list))


def _bar(progress: bool, total: int, initial: int):
    if not progress:
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, dynamic_ncols=True, mininterval=1.0)


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(msg, file=sys.stderr)
