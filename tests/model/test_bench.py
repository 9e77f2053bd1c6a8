"""`ebmm bench-serving`: its rows and table, on the smallest shipped checkpoint."""
import math

import torch

from model.bench import serving, serving_table


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
