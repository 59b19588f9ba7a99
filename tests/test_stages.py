"""The data stages on a tiny model: sample and reflect produce graded, resumable records."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from sf_mlx.pipeline import run_stage
from sf_mlx.recipe_files import dump_recipe, load_recipe
from sf_mlx.records import Problem, Reflection, Sample
from sf_mlx.rundir import RunDir, read_jsonl
from sf_mlx.tasks import grade

VARIANTS = ("original", "plan_and_execute", "alternatively", "rephrase")


def _run(tmp_path: Path, model_dir: Path, *extra: str) -> tuple[RunDir, object]:
    recipe = load_recipe(
        "countdown-tiny",
        [
            f"run.model={model_dir}",
            "problems.n_sft=3",
            "problems.n_rl=2",
            "problems.n_eval=2",
            "sample.n_samples=2",
            "sample.max_tokens=40",
            "sample.batch_size=8",
            "reflect.n_reflections=2",
            "reflect.max_tokens=40",
            *extra,
        ],
    )
    run = RunDir(tmp_path / "run").create()
    dump_recipe(recipe, run.recipe)
    run_stage(run, recipe, "problems")
    return run, recipe


def test_sample_then_reflect_on_a_tiny_model(tmp_path, tiny_model_dir):
    run, recipe = _run(tmp_path, tiny_model_dir)
    stats, _ = run_stage(run, recipe, "sample")
    samples = read_jsonl(run.samples, Sample)
    problems = {p.problem_id: p for p in read_jsonl(run.problems, Problem)}
    sft = [p for p in problems.values() if p.split == "sft"]
    assert len(samples) == len(sft) * len(VARIANTS) * 2 == stats["samples"]
    assert Counter(s.variant for s in samples) == {v: len(sft) * 2 for v in VARIANTS}
    for s in samples:  # every grade is the checker's grade of the response's last answer
        assert (s.extracted, s.correct) == grade(problems[s.problem_id], s.response)
        assert s.finish_reason in ("stop", "length") and s.num_tokens <= 40
    assert run.is_done("sample")

    stats, _ = run_stage(run, recipe, "reflect")
    reflections = read_jsonl(run.reflections, Reflection)
    assert len(reflections) == 2 * len(samples) == stats["reflections"]
    by_id = {s.sample_id: s for s in samples}
    for r in reflections:
        want = "correct" if by_id[r.sample_id].correct else "incorrect"
        assert r.agrees == (r.verdict == want)
    assert stats["samples_kept"] == len({r.sample_id for r in reflections if r.agrees})


def test_rerunning_sample_generates_nothing_new(tmp_path, tiny_model_dir):
    run, recipe = _run(tmp_path, tiny_model_dir, "sample.n_samples=1")
    run_stage(run, recipe, "sample")
    before = run.samples.read_bytes()
    run_stage(run, recipe, "sample")
    assert run.samples.read_bytes() == before


@pytest.mark.slow
def test_sigkill_mid_sample_then_rerun_loses_and_duplicates_nothing(tmp_path, tiny_model_dir):
    run, recipe = _run(tmp_path, tiny_model_dir, "sample.batch_size=2", "problems.n_sft=4")
    cmd = [sys.executable, "-m", "sf_mlx.cli", "stage", "sample", "--run-dir", str(run.path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait for at least two finished batches, then kill -9
        if run.samples.exists() and run.samples.read_bytes().count(b"\n") >= 4:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = read_jsonl(run.samples, Sample)
    total = 4 * len(VARIANTS) * 2
    assert 0 < len(partial) < total, "kill landed before the first or after the last batch"
    assert not run.is_done("sample")

    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples = read_jsonl(run.samples, Sample)
    ids = [s.sample_id for s in samples]
    assert len(ids) == len(set(ids)) == total
    assert {s.sample_id: s for s in samples}.keys() >= {s.sample_id for s in partial}
    assert run.is_done("sample")


def test_budget_forcing_cuts_the_standard_generation_and_forces_one_more_attempt(tiny_model_dir):
    """At-budget = the standard generation's first `budget` tokens; forcing cuts at `</think>`,
    appends `<sample>` and decodes on; generations without `</think>` are left as they are."""
    from sf_mlx import model as model_io
    from sf_mlx.stages.evaluate import cut_at_budget, force_budget

    model, tok = model_io.load(str(tiny_model_dir))
    closed = "<think>\n<sample>\nStep 1: 3 + 4 = 7\n</sample>\n</think>\n<answer>3 + 4</answer>"
    texts = [closed, "Step 1: 3 + 4 = 7\n<answer>3 + 4</answer>"]
    gens = []
    for t in texts:
        ids = tok.encode(t, add_special_tokens=False)
        gens.append(model_io.Generation(5, ids, t, [0.0] * len(ids), "stop"))
    budget = 12
    cut = [cut_at_budget(tok, g, budget) for g in gens]
    for g, c in zip(gens, cut, strict=True):
        assert c.tokens == g.tokens[:budget] and c.finish_reason == "length"
        assert c.text == tok.decode(g.tokens[:budget]) and g.text.startswith(c.text)
    assert cut_at_budget(tok, gens[0], 10_000) is gens[0]

    prompts = [model_io.chat_prompt(tok, "Using the numbers [3, 4], make 7.")] * 2
    params = model_io.SamplingParams(max_tokens=budget, temperature=0.7)
    forced = force_budget(model, tok, prompts, gens, params, budget, seed=0)
    head = "<think>\n<sample>\nStep 1: 3 + 4 = 7\n</sample>\n\n<sample>\n"
    assert forced[0].text.startswith(head) and forced[0].text != head
    assert len(tok.encode(forced[0].text[len(head) :], add_special_tokens=False)) <= budget + 2
    assert forced[1] is gens[1]


@pytest.mark.parametrize("recipe_name", ["countdown-small", "countdown-paper"])
def test_eval_pools_hold_distinct_held_out_questions(recipe_name):
    from sf_mlx.stages.problems import _key, eval_pools, training_pools
    from sf_mlx.tasks import heldout

    recipe = load_recipe(recipe_name)
    pools: dict[str, list[Problem]] = {}
    for p in eval_pools(recipe):
        pools.setdefault(p.split, []).append(p)
    assert len(pools) == len(recipe.problems.eval_num_args) + len(recipe.problems.ood_tasks)
    train_keys = {_key(p) for pool in training_pools(recipe) for p in pool}
    for split, pool in pools.items():
        keys = [_key(p) for p in pool]
        cfg = recipe.problems
        want = cfg.n_eval if "countdown" in split else cfg.n_eval_ood or cfg.n_eval
        assert len(pool) == want, split
        assert len(set(keys)) == len(keys), f"{split}: {len(keys) - len(set(keys))} repeated"
        assert all(heldout(p) for p in pool) and not train_keys & set(keys)


def test_out_of_domain_pools_take_task_parameters():
    from sf_mlx.stages.problems import eval_pools

    recipe = load_recipe(
        "countdown-tiny",
        ["problems.ood_tasks=[multiplication:digits=2:b_digits=1, acronym:length=3]"],
    )
    pools: dict[str, list[Problem]] = {}
    for p in eval_pools(recipe):
        pools.setdefault(p.split, []).append(p)
    mul = pools["eval/multiplication-digits2-b_digits1"]
    assert mul and all(p.data["b"] < 10 <= p.data["a"] < 100 for p in mul)
    assert all(len(p.data["words"]) == 3 for p in pools["eval/acronym-length3"])
    sized = load_recipe("countdown-tiny", ["problems.n_eval=6", "problems.n_eval_ood=3"])
    sizes = {}
    for p in eval_pools(sized):
        sizes[p.split] = sizes.get(p.split, 0) + 1
    assert {k: v for k, v in sizes.items() if "countdown" in k} == {
        f"eval/countdown-{k}": 6 for k in sized.problems.eval_num_args
    }
    assert [v for k, v in sizes.items() if "countdown" not in k] == [3]  # multiplication


def test_a_bad_out_of_domain_spec_is_one_config_error():
    with pytest.raises(ValueError, match="task spec 'acronym:size=3'"):
        load_recipe("countdown-tiny", ["problems.ood_tasks=[acronym:size=3]"])


def test_validate_scores_an_arm_on_a_training_pool_never_an_eval_pool(tmp_path, tiny_model_dir):
    from typer.testing import CliRunner

    from sf_mlx.cli import app
    from sf_mlx.records import EvalResult
    from sf_mlx.stages.evaluate import validate

    run, recipe = _run(tmp_path, tiny_model_dir, "evaluate.max_tokens=24")
    summary = validate(run, recipe, "base", "rl", n=5)
    rl = [p.problem_id for p in read_jsonl(run.problems, Problem) if p.split == "rl"]
    rows = read_jsonl(run.path / "valid" / "base" / "rl.jsonl", EvalResult)
    assert {r.problem_id for r in rows} == set(rl) and summary["n_questions"] == len(rl)
    assert summary["n"] == len(rl) * recipe.evaluate.samples_per_question
    assert summary["accuracy"] == sum(r.correct for r in rows) / len(rows)
    assert not any(r.budget for r in rows)  # no budget forcing here
    out = CliRunner().invoke(
        app, ["validate", "--run-dir", str(run.path), "--arm", "base", "--pool", "countdown-3"]
    )
    assert out.exit_code == 2 and "training pools" in out.output
