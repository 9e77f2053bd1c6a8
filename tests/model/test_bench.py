"""`ebmm bench-serving`: its rows and table, on the smallest shipped checkpoint."""
import math

import torch

from model.bench import serving, serving_table


def test_serving_rows_measure_every_read_its_products_alone_and_their_share_of_the_peak():
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
    line, compiled_1, compiled_64 = [ln for ln in table.splitlines() if ln.startswith("| binary128 |")]
    # the compiled reads: checked, used and timed beside the eager read (a C compiler is on the machine)
    for b, cline in ((1, compiled_1), (64, compiled_64)):
        assert row[f"read_{b}_compiled_status"] == "used" and row[f"read_{b}_compiled_diff"] <= 1e-5
        assert cline.startswith(f"| binary128 | {b} | used |")
        assert f"| {row[f'read_{b}_eager_same_rounds_ms']:.3f} | {row[f'read_{b}_compiled_ms']:.3f} |" in cline
    assert line.endswith(f"{row['read_64_fraction_of_sgemm']:.0%} |")
    assert f"| {row['read_1_linear_algebra_ms']:.3f} |" in line
    for b in (64, 1):
        assert row[f"read_{b}_linear_algebra_calls"] >= 5        # at least one product per read step
        assert row[f"read_{b}_linear_algebra_ms"] > 0


def test_linear_algebra_replay_records_each_product_and_costs_no_more_than_its_function():
    from model.bench import linear_algebra_ms, median_ms

    torch.manual_seed(0)
    a, b, c = torch.randn(64, 256), torch.randn(256, 256), torch.randn(64, 256)

    def fn():
        h = torch.addmm(c, a, b).tanh()          # one product, then element-wise work the replay leaves out
        for _ in range(20):
            h = (h * 1.5 - 0.25).sin().exp().sqrt()
        return h @ b.T                            # a second product, through a transposed view

    ms, calls = linear_algebra_ms(fn, 5)
    assert calls == 2
    assert 0 < ms < median_ms(fn, 5)



def test_interleaved_timings_call_every_function_in_turn_and_time_each():
    from model.bench import interleaved_median_ms

    calls: list[str] = []
    a = torch.randn(256, 256)
    out = interleaved_median_ms({"small": lambda: calls.append("small"),
                                 "product": lambda: (calls.append("product"), a @ a @ a)}, repeats=6, rounds=3)
    assert calls[:2] == ["small", "product"]                 # one warm-up call each
    assert calls[2:] == ["small"] * 2 + ["product"] * 2 + ["small"] * 2 + ["product"] * 2 + ["small"] * 2 + [
        "product"] * 2                                        # rounds of two calls of each, in turn
    assert 0 < out["small"] < out["product"]
