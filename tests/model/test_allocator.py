"""model/allocator.py: raised thresholds keep freed blocks for the next read's blocks of the same size."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROBE = r"""
import json, resource, sys
import torch
torch.set_num_threads(1)
from model.allocator import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "kept" else None
from model.bench import _episode
from model.checkpoint import load_checkpoint
from model.serving import Memory
ck = load_checkpoint("checkpoints/photos32-span16k")
m = Memory(ck)
x, q = _episode(ck.model, 64, torch.Generator().manual_seed(0))
w = m.write(x).weights
for _ in range(2):
    m.read(w, q, energies="last")
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    m.read(w, q, energies="last")
print(json.dumps({"kept": kept, "faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) / 3}))
"""


def _probe(side: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, side], cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_kept_freed_memory_spares_a_large_reads_page_faults():
    """A 64-query read of the rank-179 span memory builds 8 MB batches of systems: with glibc's own
    thresholds its blocks go back to the kernel and the next read faults them in again (thousands of pages
    per read on the hosts measured, results/explore/allocator-faults.json), kept they are reused."""
    default, kept = _probe("default"), _probe("kept")
    assert kept["kept"] is True
    assert kept["faults"] < 100 and default["faults"] > 10 * max(kept["faults"], 10), (default, kept)


def test_keep_freed_memory_says_false_where_there_is_no_glibc(monkeypatch):
    from model import allocator
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator.keep_freed_memory() is False
