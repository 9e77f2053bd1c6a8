"""`ebmm bench-serving`: its rows and table, on the smallest shipped checkpoint."""
import math

import torch

from model.bench import serving, serving_table, sgemm_gflops


def test_serving_rows_measure_every_read_and_their_share_of_the_peak_and_of_the_blas_rate():
    threads = torch.get_num_threads()
    try:
        out = serving(("checkpoints/binary128",), repeats=1)
    finally:
        torch.set_num_threads(threads)
    (row,) = out["results"]
    assert row["checkpoint"] == "binary128" and row["closed_form_grad"]
    for b in (64, 1):
        for v in ("autograd", "fast", "fast_last"):
            assert row[f"read_{b}_{v}_ms"] > 0
    assert out["sgemm_512_gflops"] > 0 and row["read_64_gflop"] > 0
    assert math.isclose(row["read_64_fraction_of_sgemm"], row["read_64_gflops_per_s"] / out["sgemm_512_gflops"],
                        rel_tol=0.02, abs_tol=1e-3)
    table = "\n".join(serving_table(out))
    assert f"{out['sgemm_512_gflops']} GFLOP/s" in table
    assert table.count("| binary128 |") == 1 and table.splitlines()[-1].endswith(
        f"{row['read_64_fraction_of_sgemm']:.0%} |")


def test_a_table_from_a_file_without_the_blas_rate_still_renders():
    out = {"machine": {"cpu": "cpu", "ghz": 2.0, "torch": "t"}, "core_peak_gflops": 64.0,
           "results": [{"checkpoint": "c", "closed_form_grad": True, "write_64_ms": 1.0, "read_64_autograd_ms": 2.0,
                        "read_64_fast_ms": 1.0, "read_64_fast_last_ms": 0.5, "read_1_autograd_ms": 0.2,
                        "read_1_fast_ms": 0.1, "read_1_fast_last_ms": 0.1, "read_64_gflops_per_s": 32.0,
                        "read_64_fraction_of_core_peak": 0.5}]}
    lines = serving_table(out)
    assert lines[-1].endswith("| 50% | n/a |") and not any("512 x 512" in line for line in lines)


def test_the_blas_rate_is_a_rate():
    assert 0 < sgemm_gflops(n=64, repeats=2) < 1e5
