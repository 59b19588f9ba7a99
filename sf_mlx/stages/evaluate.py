"""The `evaluate` stage (PAPER.md stages 8-9): every arm on every held-out task variant.

Per (arm, task): `samples_per_question` generations per question from the plain question,
graded on the last `<answer>`; accuracy = mean over all generations, with a 95% bootstrap
interval over questions; pass@k = share of questions with at least one correct generation;
skill usage (#answers, #samples, #reflections per response, verdict F1 per class against the
checker's grade of the sample each reflection follows). Budget forcing on every task:
the standard generations cut at `budget` tokens (a sample of decoding with that limit, paired
with the standard one); where the model closed `</think>` within them, cut there, append
`<sample>` and continue up to twice the budget; its gain is forced minus unforced accuracy at
that budget.
All generations are saved (`eval/<arm>/<task>.jsonl`); `eval/summary.json` is recomputed from
them, so a report's numbers can always be traced back to text.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

from sf_mlx.config import Recipe
from sf_mlx.records import EvalResult, Problem, to_dicts
from sf_mlx.rundir import RunDir, read_jsonl, write_json_atomic, write_jsonl_atomic
from sf_mlx.skills import skill_use, verdict_f1
from sf_mlx.tasks import get_task, grade

STAGE = "evaluate"
FORCE_TAG = "</think>"


def arm_model(run: RunDir, recipe: Recipe, arm: str) -> tuple[str, str | None]:
    """(model path or id, adapter folder or None) of an arm."""
    from sf_mlx.stages.arms import grpo_output

    if arm == "base":
        return recipe.run.model, None
    if arm in ("sft", "star"):
        folder = run.sft_dir if arm == "sft" else run.path / "star"
        if recipe.sft.method == "full":
            return str(folder / "model"), None
        return recipe.run.model, str(folder / "adapters")
    return grpo_output(run, recipe, arm)


def eval_pools(run: RunDir) -> dict[str, list[Problem]]:
    pools: dict[str, list[Problem]] = defaultdict(list)
    for p in read_jsonl(run.problems, Problem, complete=True):
        if p.split.startswith("eval/"):
            pools[p.split[len("eval/") :]].append(p)
    return dict(pools)


def bootstrap_ci(per_question: list[float], seed: int, n_boot: int = 1000) -> tuple[float, float]:
    """95% percentile interval of the mean, resampling questions with replacement."""
    if not per_question:
        return 0.0, 0.0
    rng = random.Random(seed)
    n = len(per_question)
    means = sorted(sum(rng.choices(per_question, k=n)) / n for _ in range(n_boot))
    return means[int(0.025 * n_boot)], means[int(0.975 * n_boot) - 1]


def summarize(results: list[EvalResult], problems: dict[str, Problem], seed: int) -> dict:
    """The numbers of one (arm, task) cell, recomputed from its saved generations."""
    plain = [r for r in results if r.budget == 0]
    by_q: dict[str, list[bool]] = defaultdict(list)
    for r in plain:
        by_q[r.problem_id].append(r.correct)
    per_q = [sum(v) / len(v) for v in by_q.values()]
    lo, hi = bootstrap_ci(per_q, seed)
    verdicts = []
    for r in plain:
        problem = problems[r.problem_id]
        use = skill_use(r.response, lambda a, p=problem: get_task(p.task).check(p, a))
        verdicts += use.verdicts
    n = max(1, len(plain))
    out = {
        "n_questions": len(by_q),
        "n": len(plain),
        "accuracy": sum(r.correct for r in plain) / n,
        "ci_low": lo,
        "ci_high": hi,
        "pass_at_k": sum(any(v) for v in by_q.values()) / max(1, len(by_q)),
        "answers_per_response": sum(r.num_answers for r in plain) / n,
        "reflections_per_response": sum(r.num_reflections for r in plain) / n,
        "mean_tokens": sum(r.num_tokens for r in plain) / n,
        "verdicts": len(verdicts),
        "verdict_f1": verdict_f1(verdicts),
    }
    at_budget = [r for r in results if r.budget and not r.budget_forced]
    forced = [r for r in results if r.budget and r.budget_forced]
    if forced and at_budget:
        out["budget"] = forced[0].budget
        out["budget_accuracy"] = sum(r.correct for r in at_budget) / len(at_budget)
        out["budget_forced_accuracy"] = sum(r.correct for r in forced) / len(forced)
        out["budget_gain"] = out["budget_forced_accuracy"] - out["budget_accuracy"]
    return out


def _results(
    arm: str, task: str, problems: list[Problem], gens, budget: int = 0, forced: bool = False
) -> list[EvalResult]:
    k = len(gens) // max(1, len(problems))
    out = []
    for i, gen in enumerate(gens):
        p = problems[i // k]
        extracted, correct = grade(p, gen.text)
        use = skill_use(gen.text, lambda a: False)  # counts only; verdicts are graded later
        out.append(
            EvalResult(
                model=arm,
                task=task,
                problem_id=p.problem_id,
                index=i % k,
                response=gen.text,
                extracted=extracted,
                correct=correct,
                num_tokens=len(gen.tokens),
                num_answers=use.answers,
                num_reflections=use.reflections,
                budget_forced=forced,
                budget=budget,
            )
        )
    return out


def cut_at_budget(tok, gen, budget: int):
    """`gen` as decoding with `max_tokens=budget` would have left it: its first `budget` tokens.
    Each token's distribution does not depend on the limit, so this is a sample of the budgeted
    decode, paired with the unbudgeted one (and it costs no decoding)."""
    from sf_mlx import model as model_io

    if len(gen.tokens) <= budget:
        return gen
    tokens = gen.tokens[:budget]
    return model_io.Generation(
        gen.prompt_tokens, tokens, tok.decode(tokens), gen.logprobs[:budget], "length"
    )


def force_budget(
    model,
    tok,
    prompts: list[list[int]],
    first,
    params,
    budget: int,
    seed: int,
    batch_size: int = 32,
):
    """Budget forcing on generations `first` decoded with `budget` tokens: where `</think>` was
    closed, cut there, append `<sample>` and continue for up to `budget` more tokens. Returns one
    generation per prompt (the unforced ones unchanged)."""
    from sf_mlx import model as model_io

    todo = [i for i, g in enumerate(first) if FORCE_TAG in g.text]
    if not todo:
        return list(first)
    heads = [first[i].text.split(FORCE_TAG, 1)[0] + "\n<sample>\n" for i in todo]
    cont_prompts = [
        prompts[i] + tok.encode(h, add_special_tokens=False)
        for i, h in zip(todo, heads, strict=True)
    ]
    more = model_io.generate(
        model, tok, cont_prompts, replace(params, max_tokens=budget), seed, batch_size
    )
    out = list(first)
    for i, head, g in zip(todo, heads, more, strict=True):
        text = head + g.text
        out[i] = model_io.Generation(
            first[i].prompt_tokens,
            tok.encode(text, add_special_tokens=False),
            text,
            [],
            g.finish_reason,
        )
    return out


def evaluate_cell(
    model, tok, arm: str, task: str, qs: list[Problem], cfg, seed: int, on_finished=None
):
    """All generations of one (arm, task) cell: standard, and with `cfg.budget` the budget pair
    on every task (the standard generations cut at the budget, and those forced to go on).
    `on_finished(n)`: n of the cell's standard answers are done."""
    from sf_mlx import model as model_io

    params = model_io.SamplingParams(cfg.max_tokens, cfg.temperature, cfg.top_p, cfg.top_k)
    prompts = [
        model_io.chat_prompt(tok, p.question) for p in qs for _ in range(cfg.samples_per_question)
    ]
    standard = model_io.generate(
        model, tok, prompts, params, seed, cfg.batch_size, on_finished=on_finished
    )
    rows = _results(arm, task, qs, standard)
    if cfg.budget:
        at_budget = [cut_at_budget(tok, g, cfg.budget) for g in standard]
        forced = force_budget(
            model, tok, prompts, at_budget, params, cfg.budget, seed + 7, cfg.batch_size
        )
        rows += _results(arm, task, qs, at_budget, cfg.budget, False)
        rows += _results(arm, task, qs, forced, cfg.budget, True)
    return rows


PROGRESS_SECONDS = 5.0  # within a cell, progress is logged at most this often


def _every(seconds: float, fn):
    """`fn`, called at most once per `seconds` (the first call always goes through)."""
    import time

    last = [float("-inf")]

    def call(*args) -> None:
        now = time.monotonic()
        if now - last[0] >= seconds:
            last[0] = now
            fn(*args)

    return call


def run_evaluate(run: RunDir, recipe: Recipe, progress=None) -> dict:
    """Every (arm, task) cell not yet written, then the summary of all of them. On N ranks
    (sf_mlx/distributed.py) rank k takes cells k, k + N, ... of the pending ones, each seeded
    by its arm and task; the writer writes each round's cells as they come."""
    from sf_mlx import distributed as dist
    from sf_mlx import model as model_io
    from sf_mlx.stages.generation import derive_seed

    cfg, seed = recipe.evaluate, recipe.run.seed
    pools = eval_pools(run)
    problems = {p.problem_id: p for ps in pools.values() for p in ps}
    # progress counts answers (questions x samples_per_question), not cells: a cell of a large
    # run can take hours
    answers = {task: len(qs) * cfg.samples_per_question for task, qs in pools.items()}
    total = len(cfg.arms) * sum(answers.values())
    cells = [(arm, task) for arm in cfg.arms for task in pools]

    def path(cell: tuple[str, str]) -> Path:
        return run.eval_dir / cell[0] / f"{cell[1]}.jsonl"

    pending = [c for c in cells if not path(c).exists()]  # a finished cell is never redone
    dist.same_on_every_rank("the evaluation cells already written", pending)
    done = total - sum(answers[task] for _, task in pending)

    def report(n: int) -> None:
        run.log_progress(STAGE, n, total)
        if progress:
            progress(n, total, 0.0)

    report(done)
    loaded: tuple[str, tuple] | None = None  # (arm, (model, tokenizer)) of the last cell

    def generate_cell(cell: tuple[str, str]) -> list[EvalResult]:
        nonlocal loaded
        arm, task = cell
        if loaded is None or loaded[0] != arm:
            loaded = arm, model_io.load(*arm_model(run, recipe, arm))
        within = _every(PROGRESS_SECONDS, lambda n, d=done: report(d + n))
        return evaluate_cell(
            *loaded[1],
            arm,
            task,
            pools[task],
            cfg,
            derive_seed(seed, STAGE, arm, task),
            on_finished=within if dist.size() == 1 else None,
        )

    for round_, per_cell in dist.in_rounds(pending, generate_cell, to_dicts):
        if run.writer:
            for cell, cell_rows in zip(round_, per_cell, strict=True):
                write_jsonl_atomic(path(cell), cell_rows)
        done += sum(answers[task] for _, task in round_)
        report(done)
    dist.barrier()  # every cell is written before the summary reads them
    if run.writer:
        summary: dict[str, dict] = {}
        for arm, task in cells:
            results = read_jsonl(path((arm, task)), EvalResult)
            summary.setdefault(arm, {})[task] = summarize(results, problems, seed)
        write_json_atomic(run.eval_dir / "summary.json", summary)
    run.mark_done(STAGE, {"cells": len(cells), "answers": total})
    return {"arms": list(cfg.arms), "tasks": list(pools)}


VALIDATION_POOLS = ("sft", "rl")


def validate(run: RunDir, recipe: Recipe, arm: str, pool: str = "rl", n: int = 100) -> dict:
    """One arm on `n` problems of a training pool (`rl` or `sft`, never the held-out evaluation
    pools), decoded as `evaluate` decodes, without budget forcing: the numbers to choose
    settings by. Generations go to `valid/<arm>/<pool>.jsonl`; returns the cell's summary."""
    from sf_mlx import model as model_io
    from sf_mlx.stages.generation import derive_seed

    if pool not in VALIDATION_POOLS:
        raise ValueError(
            f"pool {pool!r}: expected one of {list(VALIDATION_POOLS)} (training pools)"
        )
    qs = [p for p in read_jsonl(run.problems, Problem) if p.split == pool][:n]
    if not qs:
        raise ValueError(f"{run.problems}: no problems in the {pool} pool; run `problems` first")
    model, tok = model_io.load(*arm_model(run, recipe, arm))
    cfg = replace(recipe.evaluate, budget=0)
    seed = derive_seed(recipe.run.seed, "validate", arm, pool)
    rows = evaluate_cell(model, tok, arm, pool, qs, cfg, seed)
    write_jsonl_atomic(run.path / "valid" / arm / f"{pool}.jsonl", rows)
    return summarize(rows, {p.problem_id: p for p in qs}, recipe.run.seed)


def load_summary(run: RunDir) -> dict:
    from sf_mlx.rundir import read_json

    path = Path(run.eval_dir) / "summary.json"
    return read_json(path) if path.exists() else {}
