"""The comparison arms: STaR data and SFT, each arm's starting model, and the `grpo/<arm>` stages.

Every arm runs the identical GRPO config on the identical RL pool; only the starting model
differs (PAPER.md "Baselines"):
- `rl_only`: GRPO from the base model;
- `sft_grpo`: GRPO from base + SkillFactory SFT (the SFT adapter fused into the weights);
- `star_grpo`: GRPO from base + STaR SFT (SFT on the model's own correct samples).
The GRPO reference policy of an arm is its starting model (its GRPO adapter switched off).
"""

from __future__ import annotations

from pathlib import Path

from sf_mlx import distributed as dist
from sf_mlx.config import Recipe
from sf_mlx.records import Problem, Rollout, Sample
from sf_mlx.rundir import RunDir, read_jsonl, write_json_atomic, write_jsonl_atomic
from sf_mlx.stages.problems import read_pool
from sf_mlx.tasks import grade

GRPO_ARMS = ("sft_grpo", "rl_only", "star_grpo")


def star_rows(problems: dict[str, Problem], samples: list[Sample]) -> list[dict]:
    """STaR SFT data: the plain question and each of the model's own correct samples."""
    return [
        {
            "messages": [
                {"role": "user", "content": problems[s.problem_id].question},
                {"role": "assistant", "content": s.response.strip()},
            ]
        }
        for s in samples
        if s.correct and s.finish_reason == "stop"
    ]


def run_star(run: RunDir, recipe: Recipe, progress=None) -> dict:
    """SFT on STaR data with the same SFT settings as SkillFactory's (stage `star`)."""
    from sf_mlx.stages.sft import train_sft

    problems = {p.problem_id: p for p in read_jsonl(run.problems, Problem, complete=True)}
    rows = star_rows(problems, read_jsonl(run.samples, Sample, complete=True))
    if not rows:
        raise ValueError("STaR: the sample stage produced no correct samples to train on")
    star_dir = run.path / "star"
    if run.writer:
        write_jsonl_atomic(star_dir / "train.jsonl", rows)
    dist.barrier()
    stats = train_sft(
        recipe.run.model,
        star_dir / "train.jsonl",
        None,
        _sft_out(star_dir, recipe),
        recipe.sft,
        recipe.run.seed,
        log_metrics=lambda step, m: run.log_metrics("star", step, m),
        progress=progress,
        writer=run.writer,
    )
    run.mark_done("star", stats)
    return stats


def _sft_out(folder: Path, recipe: Recipe) -> Path:
    return folder / ("adapters" if recipe.sft.method == "lora" else "model")


def starting_model(run: RunDir, recipe: Recipe, arm: str) -> str:
    """A model folder (or the recipe's model id) an arm's GRPO starts from."""
    from sf_mlx.stages.model_folders import fuse

    if arm == "rl_only":
        return recipe.run.model
    folder = {"sft_grpo": run.sft_dir, "star_grpo": run.path / "star"}[arm]
    if recipe.sft.method == "full":
        return str(folder / "model")
    fused = folder / "fused"
    if not (fused / "config.json").exists():
        fuse(recipe.run.model, folder / "adapters", fused)
    return str(fused)


def load_policy(start: str, cfg, seed: int):
    """(model, tokenizer, what trains): the arm's starting model with a fresh LoRA adapter (its
    mlx-lm adapter config), or with every weight trainable (`grpo.method=full`: fine_tune_type
    "full" and whether a half-precision model was cast to float32 master weights). The adapter's
    initial weights are a function of `seed`, so a stage restarted before its first checkpoint
    starts from the same ones."""
    import mlx.core as mx

    from sf_mlx import model as model_io
    from sf_mlx.lora import attach_lora
    from sf_mlx.stages.sft import fp32_master

    model, tok = model_io.load(start)
    if cfg.method == "full":
        model.unfreeze()
        return model, tok, {"fine_tune_type": "full", "fp32_master": fp32_master(model)}
    mx.random.seed(seed)
    return model, tok, attach_lora(model, cfg.lora_rank, cfg.lora_scale, 0.0, -1)


def grpo_output(run: RunDir, recipe: Recipe, arm: str) -> tuple[str, str | None]:
    """(model folder or id, adapter folder or None) an arm's GRPO wrote: with LoRA the starting
    model and the adapter, with full-parameter GRPO the trained model folder."""
    if recipe.grpo.method == "full":
        return str(run.grpo_dir(arm) / "model"), None
    return starting_model(run, recipe, arm), str(run.grpo_dir(arm) / "adapters")


def run_grpo_arm(run: RunDir, recipe: Recipe, arm: str, progress=None) -> dict:
    """GRPO for one arm: rollouts saved per step, metrics logged, adapters saved in mlx-lm form."""
    from sf_mlx.lora import save_adapters
    from sf_mlx.stages.grpo import train_grpo

    if arm not in GRPO_ARMS:
        raise ValueError(f"unknown GRPO arm {arm!r}; expected one of {', '.join(GRPO_ARMS)}")
    cfg, stage, out = recipe.grpo, f"grpo/{arm}", run.grpo_dir(arm)
    if run.writer:  # an SFT adapter is fused once, before any rank loads the result
        starting_model(run, recipe, arm)
    dist.barrier()
    start = starting_model(run, recipe, arm)
    model, tok, trains = load_policy(start, cfg, recipe.run.seed)
    problems = read_pool(run, "rl")
    history: list[dict] = []
    say = print if dist.rank() == 0 else (lambda *a: None)
    say(
        f"{stage}: {cfg.steps} steps x {cfg.prompts_per_step} prompts x {cfg.group_size} "
        f"completions x <= {cfg.max_tokens} tokens, from {start}"
    )

    def on_step(step: int, metrics: dict, batch) -> None:
        if not history:  # after the first step: what the whole run will cost
            secs = metrics["grpo/rollout_sec"] + metrics["grpo/update_sec"]
            say(
                f"{stage}: first step {secs:.1f} s (rollout {metrics['grpo/rollout_sec']:.1f} s), "
                f"peak memory {metrics['grpo/peak_memory_gb']:.2f} GB; "
                f"projected {secs * (cfg.steps - step + 1) / 60:.1f} min for the remaining steps"
            )
        g = cfg.group_size
        rows = [
            Rollout(
                step=step,
                group=k // g,
                problem_id=problems[batch.problem_idx[k // g]].problem_id,
                index=k % g,
                completion=text,
                reward=float(batch.rewards.flat[k]),
                advantage=float(batch.advantages.flat[k]),
                extracted=grade(problems[batch.problem_idx[k // g]], text)[0],
                num_tokens=len(batch.completions[k]),
                truncated=batch.truncated[k],
                arm=arm,
            )
            for k, text in enumerate(batch.texts)
        ]
        if run.writer:
            write_jsonl_atomic(run.rollouts_path(arm, step), rows)
        run.log_metrics(stage, step, metrics)
        history.append(metrics)
        run.log_progress(stage, step, cfg.steps)
        if progress:
            progress(step, cfg.steps, metrics["grpo/tokens_per_sec"])

    steps = train_grpo(
        model,
        tok,
        problems,
        lambda p, text: float(grade(p, text)[1]),
        cfg,
        out / "checkpoint",
        recipe.run.seed,
        on_step=on_step,
        writer=run.writer,
    )
    stats = {"arm": arm, "steps": steps, "start_model": start}
    if history:
        last = history[-1]
        stats.update({k.split("/", 1)[1]: round(float(v), 4) for k, v in last.items()})
    if not run.writer:
        return stats
    if trains["fine_tune_type"] == "full":
        from sf_mlx.stages.model_folders import save_model_folder

        save_model_folder(model, tok, start, out / "model", float32=trains["fp32_master"])
        record = {"start_model": start, "model": str(out / "model")}
    else:
        save_adapters(model, out / "adapters", trains)
        record = {"start_model": start, "adapters": str(out / "adapters")}
    write_json_atomic(out / "model.json", record)
    write_jsonl_atomic(out / "summary.jsonl", [stats])  # a rerun replaces it
    run.mark_done(stage, stats)
    return stats
