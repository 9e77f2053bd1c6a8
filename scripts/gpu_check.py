"""The GPU path, checked on a machine with CUDA (scripts/gpu_check.sh runs this and the rest):

1. every shipped checkpoint writes and reads the same episode on cuda and on the cpu, and the restored
   patterns agree (max |difference| <= 1e-4; errors per pattern printed for both);
2. one model's write/read timed on both devices;
3. a short meta-training run (`train` with device="cuda") takes steps and its loss is finite;
4. compiled one-query reads (model/compiled.py) on cuda: what became of each compile, and its time.
Prints a Markdown report on stdout.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from model import compiled  # noqa: E402
from model.checkpoint import load_checkpoint  # noqa: E402
from model.memory import read, write  # noqa: E402
from model.train import TrainConfig, train  # noqa: E402


def episode(shape: tuple[int, ...], n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, *shape, generator=g) < 0.3).float()
    q = x.clone().flatten(1)
    q[:, : q.shape[1] // 4] = torch.rand(n, q.shape[1] // 4, generator=g)
    return x, q.view_as(x)


def run(model, x: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, float]:
    p = model.params(detach=True)
    dev = next(iter(p.values())).device
    t0 = time.perf_counter()
    w = write(model, p, x.to(dev)).weights
    out = read(model, p, w, q.to(dev)).iterates[-1]
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return out.cpu(), time.perf_counter() - t0


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 1
    print(f"# GPU check\n\n{torch.cuda.get_device_name(0)}, torch {torch.__version__}\n")
    print("| checkpoint | max abs diff cpu vs cuda | cpu s | cuda s |\n|---|---|---|---|")
    worst = 0.0
    for card in sorted((REPO / "checkpoints").glob("*/card.json")):
        if card.parent.parent.name == "baselines" or card.parent.name == "baselines":
            continue
        ck = load_checkpoint(card.parent)
        x, q = episode(tuple(ck.model.cfg.input_shape))
        cpu_out, cpu_s = run(ck.model, x, q)
        ck.model.to("cuda")
        run(ck.model, x, q)                                          # warm-up (kernels, allocator)
        gpu_out, gpu_s = run(ck.model, x, q)
        diff = float((cpu_out - gpu_out).abs().max())
        worst = max(worst, diff)
        print(f"| {ck.name} | {diff:.2e} | {cpu_s:.3f} | {gpu_s:.3f} |")
    cfg = TrainConfig(preset="binary-hopfield", task="binary", patterns=(64,), meta_batch=4, steps=20,
                      device="cuda", out="/tmp/ebmm-gpu-check/ck", state_dir="/tmp/ebmm-gpu-check/state",
                      checkpoint_every=20)
    t0 = time.perf_counter()
    train(cfg, progress=False)
    rows = (Path(cfg.state_dir) / "metrics.jsonl").read_text().splitlines()
    print(f"\nmeta-training on cuda: {len(rows)} steps in {time.perf_counter() - t0:.1f} s, last row {rows[-1]}")
    print("\n| checkpoint | compiled 1-query read on cuda | eager ms | compiled ms |\n|---|---|---|---|")
    for name in ("binary128-rnn", "characters32"):
        ck = load_checkpoint(REPO / "checkpoints" / name, "cuda")
        p = ck.model.params(detach=True)
        x, q = episode(tuple(ck.model.cfg.input_shape))
        w = write(ck.model, p, x.cuda()).weights
        q1 = q[:1].cuda()

        def ms(q1=q1, model=ck.model, p=p, w=w) -> float:
            read(model, p, w, q1, energies="last")
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(50):
                read(model, p, w, q1, energies="last")
            torch.cuda.synchronize()
            return (time.perf_counter() - t0) / 50 * 1000
        eager = ms()
        kinds = compiled.enable(ck.model)
        read(ck.model, p, w, q1, energies="last")                      # compiles and checks
        (k,) = kinds.summary()
        timed = f"{ms():.3f}" if k["status"] == "used" else "-"
        print(f"| {name} | {k['status']}{'' if not k['reason'] else ': ' + k['reason']} | {eager:.3f} | {timed} |")
    ok = worst <= 1e-4
    print(f"\n{'PASS' if ok else 'FAIL'}: worst cpu/cuda difference {worst:.2e} (limit 1e-4)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
