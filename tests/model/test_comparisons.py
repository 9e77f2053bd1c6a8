"""What the report concludes from evaluation rows: the strongest baseline within budget, margins."""
from model.comparisons import binary_margins, load_tables, prefer_loads, strongest_within_budget


def row(n: int, ebmm: float, floats: int = 1000, **baselines: tuple[float, int]) -> dict:
    return {"task": "characters", "patterns": n, "distortion": "block:16", "checkpoint": "m", "episodes": 10,
            "memory_floats": floats, "error_mean": ebmm, "query_error_mean": 128.0, "metric": "hamming",
            "_file": "m-loads.json",
            "baselines": {k: {"error_mean": e, "memory_floats": f} for k, (e, f) in baselines.items()}}


def test_the_strongest_baseline_is_the_best_that_fits_the_budget_and_is_a_memory():
    r = row(64, 5.0, nearest_full=(0.0, 65536), nearest_pca=(7.0, 1000), inpainting_prior=(60.0, 0),
            no_memory=(1.0, 0))
    name, b = strongest_within_budget(r)
    assert name == "nearest_pca" and b["error_mean"] == 7.0               # nearest_full needs more floats
    assert strongest_within_budget(r, budget=70000)[0] == "nearest_full"
    assert strongest_within_budget(row(64, 1.0)) is None


def test_load_tables_state_the_margin_at_every_n():
    rows = [row(16, 2.0, nearest_pca=(1.0, 1000)), row(64, 9.0, nearest_pca=(12.0, 1000))]
    text = "\n".join(load_tables("characters", rows))
    assert "| EBMM minus that baseline | +1.00 | -3.00 |" in text


def test_binary_margins_say_ahead_behind_or_tie():
    def b(n, model, tuned):
        rules = {"hopfield_pinv": {"error_mean": 9.0}, "hopfield_pinv_tuned_gain": {"error_mean": tuned},
                 "hopfield_pinv_tuned_ridge": {"error_mean": tuned + 1}}
        return {"task": "binary", "checkpoint": "binary128", "distortion": "flip:8", "patterns": n,
                "error_mean": model, "baselines": rules}
    text = "\n".join(binary_margins([b(16, 0.0, 0.0), b(64, 0.5, 1.0), b(96, 2.0, 1.0)]))
    assert "| tie |" in text and "| ahead |" in text and "| behind |" in text


def test_a_load_row_replaces_the_single_cell_row_of_the_same_cell():
    single = {**row(64, 3.0), "_file": "m.json"}
    other = {**row(32, 3.0), "_file": "m.json"}
    loads = row(64, 3.1)
    out = prefer_loads([single, other, loads])
    assert loads in out and other in out and single not in out


def test_the_recipe_ablation_section_lists_every_arm_with_its_cost_and_error_and_plots_them(tmp_path):
    import json

    from model.report import recipe_ablation
    folder = tmp_path / "ablation"
    folder.mkdir()
    arm = {"meta_steps": 100, "seconds_per_meta_step": 3.1, "train_error_last_100_steps": 90.5,
           "train_query_error_last_100_steps": 128.0, "held_out_hamming": 101.25, "held_out_query_hamming": 128.3}
    (folder / "summary.json").write_text(json.dumps({
        "command": "scripts/recipe_ablation.py", "preset": "paper-fc-d36-gray", "seconds_per_arm": 600,
        "evaluation": {"episodes": 100, "patterns": 64, "distortion": "block:16"},
        "arms": {"full": arm, "k2": {**arm, "seconds_per_meta_step": 0.5, "held_out_hamming": 77.0},
                 "distill-long": {**arm, "settings": {"distill": "checkpoints/characters32-8k", "distill_steps": 1500},
                                  "earlier": [{**arm, "train_seconds": 1680.0, "held_out_hamming": 82.95}]}}}))
    (folder / "full.csv").write_text("step,seconds,n,loss,final_error,query_error\n1,3.1,64,1,100,128\n")
    text = "\n".join(recipe_ablation(folder, tmp_path))
    assert "| full | 10 | 3.1 | 100 | 90.5 (128.0) | 101.25 (128.3) |" in text
    assert "| k2 | 10 | 0.5 | 100 | 90.5 (128.0) | 77.0 (128.3) |" in text
    # a distilled arm says its teacher; an arm trained on in another segment says what it erred before
    assert ("| distill-long, distilled from characters32-8k for 1500 steps; after 28 minutes of meta-training "
            "(100 steps) it erred 82.95 | 10 | 3.1 |") in text
    assert (tmp_path / "recipe_ablation.png").stat().st_size > 0
    assert recipe_ablation(tmp_path / "missing", tmp_path) == []
