"""`sf-mlx compare`: means over seeds, intervals over seeds and questions, paired questions."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from sf_mlx.cli import app
from sf_mlx.records import EvalResult
from sf_mlx.rundir import RunDir, write_jsonl_atomic
from sf_mlx.study import compare, compare_markdown


def _run(root, name: str, cells: dict[str, dict[str, list[bool]]]):
    """A run folder whose eval/ holds, per arm and cell, one row per (question, sample)."""
    run = RunDir(root / name).create()
    for key, questions in cells.items():
        arm, cell = key.split("/")
        rows = [
            EvalResult(arm, cell, f"{cell}/{q}", i, "r", None, ok, 5, 1, 0, False)
            for q, answers in enumerate(questions)
            for i, ok in enumerate(answers)
        ]
        # budget-forcing rows are not standard decoding: never counted
        rows.append(EvalResult(arm, cell, f"{cell}/0", 0, "r", None, True, 5, 1, 0, True, 128))
        write_jsonl_atomic(run.eval_dir / arm / f"{cell}.jsonl", rows)
    return run.path


def test_one_seed_gives_the_question_means_and_a_bracketing_interval(tmp_path):
    q = [[True, False], [True, True], [False, False], [True, False]]  # 0.5 1 0 0.5
    path = _run(tmp_path, "s0", {"base/countdown-3": q, "base/countdown-4": [[True]] * 4})
    out = compare([path], n_boot=500)
    c3 = out["cells"]["base"]["countdown-3"]
    assert c3["mean"] == pytest.approx(0.5) and c3["questions"] == [4]
    assert 0.0 <= c3["low"] < 0.5 < c3["high"] <= 1.0
    c4 = out["cells"]["base"]["countdown-4"]
    assert (c4["mean"], c4["low"], c4["high"]) == (1.0, 1.0, 1.0)  # no spread, no width
    assert out["cells"]["base"]["mean 4-6"]["mean"] == 1.0


def test_the_interval_counts_the_spread_between_seeds(tmp_path):
    a = _run(tmp_path, "s0", {"base/countdown-3": [[False]] * 30})
    b = _run(tmp_path, "s1", {"base/countdown-3": [[True]] * 30})
    cell = compare([a, b], n_boot=1000)["cells"]["base"]["countdown-3"]
    # every question agrees within its seed: all the uncertainty is which seeds were drawn
    assert cell["mean"] == pytest.approx(0.5) and cell["per_seed"] == [0.0, 1.0]
    assert (cell["low"], cell["high"]) == (0.0, 1.0)


def test_the_paired_difference_keeps_questions_paired(tmp_path):
    cells = {}
    for k in (4, 5, 6):
        answers = [[i % 2 == 0] for i in range(20)]  # half right, on the same questions
        cells[f"sft_grpo/countdown-{k}"] = answers
        cells[f"rl_only/countdown-{k}"] = answers
    same = compare([_run(tmp_path, "same", cells)], n_boot=500)["paired"]
    # unpaired resampling would give a wide interval around 0; paired, it has no width
    assert (same["mean"], same["low"], same["high"]) == (0.0, 0.0, 0.0)
    for k in (4, 5, 6):
        cells[f"sft_grpo/countdown-{k}"] = [[True]] * 20
    better = compare([_run(tmp_path, "better", cells)], n_boot=500)["paired"]
    assert better["mean"] == pytest.approx(0.5) and better["cells"] == [
        "countdown-4",
        "countdown-5",
        "countdown-6",
    ]
    text = compare_markdown(compare([_run(tmp_path, "b2", cells)], n_boot=200))
    assert "| SkillFactory -> GRPO |" in text and "+50.0 points" in text


def test_the_command_writes_the_table_and_refuses_a_run_without_evaluation(tmp_path):
    path = _run(tmp_path, "s0", {"base/countdown-3": [[True], [False]]})
    result = CliRunner().invoke(app, ["compare", str(path), "--out", str(tmp_path / "cmp")])
    assert result.exit_code == 0, result.output
    assert "| base model | 50.0 [" in result.output
    assert (tmp_path / "cmp" / "compare.md").read_text().startswith("Accuracy in %")
    assert (tmp_path / "cmp" / "plots" / "accuracy_ladder.png").stat().st_size > 1000
    (tmp_path / "empty").mkdir()
    bad = CliRunner().invoke(app, ["compare", str(tmp_path / "empty")])
    assert bad.exit_code == 2 and "no eval/ folder" in bad.output


def test_a_study_runs_the_recipe_once_per_seed_then_compares(tmp_path, monkeypatch):
    """`run.seeds`: one resumable run per seed with run.seed set, then compare.md over them.
    The stages are stand-ins here (the real ones are tested elsewhere); they record the seed
    they saw and write generations whose accuracy depends on it."""
    from sf_mlx import pipeline
    from sf_mlx.recipe_files import load_recipe

    seen: list[tuple[str, int]] = []

    def fake(stage):
        def run_fake(run, recipe, progress):
            seen.append((stage, recipe.run.seed))
            if stage == "evaluate":
                right = recipe.run.seed == 1
                _run(run.path.parent, run.path.name, {"base/countdown-4": [[right]] * 10})
            run.mark_done(stage)  # as every real stage does last
            return {}

        return run_fake

    monkeypatch.setattr(pipeline, "STAGES", {s: fake(s) for s in pipeline.STAGES})
    study = pipeline.run_recipe("countdown-tiny", ["run.seeds=[0, 1]"], tmp_path / "study", log=str)
    assert {s for _, s in seen} == {0, 1} and ("evaluate", 1) in seen
    for seed in (0, 1):
        assert load_recipe(str(study.path / f"seed-{seed}" / "recipe.yaml")).run.seed == seed
    text = (study.path / "compare.md").read_text()
    assert "over 2 run(s)" in text and "| base model | 50.0 [0.0, 100.0]" in text
    done = len(seen)
    pipeline.run_recipe("countdown-tiny", ["run.seeds=[0, 1]"], tmp_path / "study", log=str)
    assert len(seen) == done  # every seed's stages were done: nothing runs again
    with pytest.raises(ValueError, match="repeats a seed"):
        load_recipe("countdown-tiny", ["run.seeds=[2, 2]"])


def test_smoothing_keeps_the_first_point_and_a_flat_series_flat():
    from sf_mlx.metrics import smooth

    assert smooth([1.0, 0.0, 1.0], 0.0) == [1.0, 0.0, 1.0]
    assert smooth([0.4] * 5, 0.9) == pytest.approx([0.4] * 5)
    ys = smooth([0.0] * 3 + [1.0] * 3, 0.5)
    assert ys[0] == 0.0 and ys[3] < 1.0 and ys[3] < ys[4] < ys[5] < 1.0  # lags a step change


def test_grpo_curves_average_the_seeds_with_a_band_over_them(tmp_path):
    from sf_mlx.study import compare_plots, grpo_curves

    paths = []
    for seed, level in ((0, 0.2), (1, 0.6)):
        path = _run(tmp_path, f"s{seed}", {"rl_only/countdown-4": [[True], [False]]})
        run = RunDir(path)
        for step in (1, 2, 3):
            run.log_metrics("grpo/rl_only", step, {"grpo/reward": level + 0.1 * step})
        if seed == 0:  # a step the other seed never logged
            run.log_metrics("grpo/rl_only", 4, {"grpo/reward": 9.0})
        paths.append(path)
    c = grpo_curves(paths, "grpo/reward", weight=0.0)["rl_only"]
    assert c["steps"] == [1, 2, 3]  # only steps every seed logged
    assert c["mean"] == pytest.approx([0.5, 0.6, 0.7])
    assert c["low"] == pytest.approx([0.3, 0.4, 0.5])
    assert c["high"] == pytest.approx([0.7, 0.8, 0.9])
    assert c["runs"] == 2
    names = compare_plots(compare(paths, n_boot=100), tmp_path / "plots")
    assert names == ["accuracy_ladder.png", "grpo_curves.png"]
