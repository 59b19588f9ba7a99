"""SFT on a tiny model: answer-only mask, LoRA trains only adapters, saved and fused models load."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from sf_mlx import model as model_io
from sf_mlx.config import SftConfig, recipe_from_dict
from sf_mlx.lora import adapter_weights, attach_lora, count_params, save_adapters
from sf_mlx.rundir import RunDir
from sf_mlx.stages.model_folders import fuse
from sf_mlx.stages.sft import (
    encode_chat,
    load_examples,
    make_batches,
    run_sft,
    train,
    train_sft,
)

ROWS = [  # short chats the tiny model can memorise
    ("Numbers: 2 3. Target: 5.", "<answer>2 + 3</answer>"),
    ("Numbers: 4 1. Target: 3.", "<answer>4 - 1</answer>"),
    ("Numbers: 6 2. Target: 12.", "<answer>6 * 2</answer>"),
    ("Numbers: 8 4. Target: 2.", "<answer>8 / 4</answer>"),
]


def _chat(user: str, answer: str) -> dict:
    return {
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    }


def _write(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(_chat(u, a)) + "\n" for u, a in rows))
    return path


def _logits(model, tokenizer) -> np.ndarray:
    ids = model_io.chat_prompt(tokenizer, ROWS[0][0]) + tokenizer.encode(ROWS[0][1])
    out = model(mx.array([ids]))  # (1, T, V)
    mx.eval(out)
    return np.array(out)


def _base_weights(model) -> dict[str, np.ndarray]:
    """Every non-adapter weight, by its name without the LoRA wrapper's `.linear`."""
    return {
        k.replace(".linear.", "."): np.array(v)
        for k, v in tree_flatten(model.parameters())
        if not k.endswith((".lora_a", ".lora_b"))
    }


@pytest.fixture(scope="module")
def lora_trained(tiny_model_dir, tmp_path_factory):
    """A tiny model with LoRA trained 8 steps in memory, its adapter saved; and the base copy."""
    model, tok = model_io.load(str(tiny_model_dir))
    before = _base_weights(model)
    cfg = SftConfig(rank=4, scale=10.0, learning_rate=1e-2, iters=8, batch_size=4, warmup=2)
    mx.random.seed(0)
    adapter_cfg = attach_lora(model, cfg.rank, cfg.scale, cfg.dropout, cfg.num_layers)
    examples = [encode_chat(tok, _chat(u, a)["messages"]) for u, a in ROWS * 2]
    train(model, make_batches(examples, 4, 0), [], cfg, seed=0)
    out = save_adapters(model, tmp_path_factory.mktemp("lora") / "adapters", adapter_cfg)
    model.eval()
    return model, tok, out, before


def test_mask_is_one_on_answer_and_eos_only(tiny_model_dir):
    _, tok = model_io.load(str(tiny_model_dir))
    user, answer = ROWS[0]
    ids, mask = encode_chat(tok, _chat(user, answer)["messages"])
    prompt = model_io.chat_prompt(tok, user)  # the ids the model is prompted with when sampling
    assert ids[: len(prompt)] == prompt
    assert mask == [0.0] * len(prompt) + [1.0] * (len(ids) - len(prompt))
    assert ids[-1] == tok.eos_token_id
    assert tok.decode(ids[len(prompt) : -1]) == answer
    with pytest.raises(ValueError, match="assistant"):
        encode_chat(tok, [{"role": "user", "content": user}])


def test_long_rows_are_cut_and_counted(tiny_model_dir, tmp_path):
    _, tok = model_io.load(str(tiny_model_dir))
    short, long_answer = ROWS[0], ("Numbers: 1 2. Target: 3.", "1 + 2 = 3. " * 30)
    n_short = len(encode_chat(tok, _chat(*short)["messages"])[0])
    n_prompt = len(model_io.chat_prompt(tok, long_answer[0]))
    max_len = max(n_short, n_prompt + 5)
    path = _write(tmp_path / "t.jsonl", [short, long_answer, ("x " * 200, "y")])
    examples, truncated, dropped = load_examples(tok, path, max_len)
    assert (truncated, dropped) == (2, 1)  # the last row's prompt alone fills the window
    assert [len(ids) for ids, _ in examples] == [n_short, max_len]
    assert sum(examples[1][1]) == max_len - n_prompt  # the cut row keeps its answer's head


def test_lora_trains_only_adapter_weights(lora_trained):
    model, _, _, before = lora_trained
    trainable, total = count_params(model)
    adapters = adapter_weights(model)
    assert trainable == sum(v.size for v in adapters.values()) > 0
    assert total == trainable + sum(v.size for v in before.values())
    after = _base_weights(model)
    assert after.keys() == before.keys()
    assert all(np.array_equal(after[k], before[k]) for k in before)  # bit-identical base
    lora_b = [np.abs(np.array(v)).max() for k, v in adapters.items() if k.endswith("lora_b")]
    assert min(lora_b) > 0  # lora_b starts at zero: every adapter was trained


def test_saved_adapter_loads_with_mlx_lm_and_gives_the_same_logits(lora_trained, tiny_model_dir):
    from mlx_lm import load

    model, tok, adapter_dir, _ = lora_trained
    reloaded, _ = load(str(tiny_model_dir), adapter_path=str(adapter_dir))
    np.testing.assert_allclose(_logits(reloaded, tok), _logits(model, tok), atol=1e-5)
    base, _ = load(str(tiny_model_dir))
    assert not np.allclose(_logits(base, tok), _logits(model, tok), atol=1e-3)  # it did train


def test_fused_folder_loads_without_adapter(lora_trained, tiny_model_dir, tmp_path):
    from mlx_lm import load

    model, tok, adapter_dir, _ = lora_trained
    out = fuse(str(tiny_model_dir), adapter_dir, tmp_path / "fused")
    assert not (out / "adapter_config.json").exists()
    fused, fused_tok = load(str(out))
    assert not adapter_weights(fused)
    assert fused_tok.encode(ROWS[0][0]) == tok.encode(ROWS[0][0])
    np.testing.assert_allclose(_logits(fused, tok), _logits(model, tok), atol=1e-4)


def test_sft_stage_lowers_the_loss_and_logs_metrics(tiny_model_dir, tmp_path):
    run = RunDir(tmp_path / "run").create()
    _write(run.sft_dir / "train.jsonl", ROWS * 4)  # 16 rows
    _write(run.sft_dir / "valid.jsonl", ROWS[:2])
    recipe = recipe_from_dict(
        {
            "run": {"model": str(tiny_model_dir), "seed": 3},
            "sft": {
                "iters": 30,
                "batch_size": 4,
                "learning_rate": 1e-3,
                "warmup": 3,
                "eval_every": 10,
                "save_every": 20,
            },
        }
    )
    seen = []
    stats = run_sft(run, recipe, progress=lambda done, total, tps: seen.append((done, total)))
    assert stats["train_loss"] < 0.7 * stats["train_loss_first"], stats
    metrics = run.read_events("metric")
    last = np.mean([m["sft/train_loss"] for m in metrics[-5:]])  # not one lucky batch
    assert last < 0.7 * metrics[0]["sft/train_loss"]
    assert stats["valid_loss"] is not None and stats["truncated"] == 0
    assert seen == [(i, 30) for i in range(1, 31)]
    assert [m["step"] for m in metrics] == list(range(1, 31))
    assert [m["step"] for m in metrics if "sft/valid_loss" in m] == [10, 20, 30]
    assert {"sft/train_loss", "sft/learning_rate", "sft/tokens_per_sec"} <= metrics[0].keys()
    assert metrics[0]["sft/learning_rate"] < metrics[2]["sft/learning_rate"]  # warmup
    assert metrics[-1]["sft/learning_rate"] < metrics[3]["sft/learning_rate"]  # cosine decay
    adapters = run.sft_dir / "adapters"
    assert {p.name for p in adapters.iterdir()} == {"adapters.safetensors", "adapter_config.json"}
    assert run.is_done("sft") and run.done_info("sft")["steps"] == 30


def test_full_fine_tuning_trains_everything_and_saves_a_model(tiny_model_dir, tmp_path):
    from mlx_lm import load

    path = _write(tmp_path / "train.jsonl", ROWS * 2)
    cfg = SftConfig(method="full", learning_rate=1e-3, iters=4, batch_size=4, warmup=0)
    stats = train_sft(str(tiny_model_dir), path, None, tmp_path / "model", cfg, seed=0)
    assert stats["trainable_params"] == stats["total_params"] > 0
    assert stats["valid_loss"] is None
    base, tok = load(str(tiny_model_dir))
    tuned, _ = load(str(tmp_path / "model"))
    b, t = dict(tree_flatten(base.parameters())), dict(tree_flatten(tuned.parameters()))
    assert b.keys() == t.keys()
    assert all(not np.array_equal(np.array(b[k]), np.array(t[k])) for k in b if "weight" in k)
    assert not np.allclose(_logits(base, tok), _logits(tuned, tok), atol=1e-4)


def test_epochs_size_the_run_whatever_the_number_of_traces():
    from sf_mlx.config import SftConfig
    from sf_mlx.stages.sft import sized

    assert sized(SftConfig(iters=150), 70).iters == 150  # epochs 0: iters as given
    assert sized(SftConfig(iters=150, epochs=2.0), 70).iters == 140
    assert sized(SftConfig(iters=150, epochs=1.5), 125).iters == 188  # rounded up
    assert sized(SftConfig(epochs=0.001), 3).iters == 1


def test_an_adapter_fused_into_a_quantized_base_keeps_its_effect(
    lora_trained, tiny_model_dir, tmp_path
):
    """The merged model equals base + adapter; quantizing again would have blurred the adapter."""
    import json

    from mlx_lm import load
    from mlx_lm.utils import load_config, quantize_model, save

    _, tok, adapter_dir, _ = lora_trained
    base, base_tok = load(str(tiny_model_dir))
    qmodel, qconfig = quantize_model(base, load_config(tiny_model_dir), group_size=32, bits=4)
    qdir = tmp_path / "q4"
    save(qdir, str(tiny_model_dir), qmodel, base_tok, qconfig, donate_model=False)
    with_adapter, _ = load(str(qdir), adapter_path=str(adapter_dir))
    plain, _ = load(str(qdir))
    effect = np.abs(_logits(with_adapter, tok) - _logits(plain, tok)).mean()
    out = fuse(str(qdir), adapter_dir, tmp_path / "fused")
    assert "quantization" not in json.loads((out / "config.json").read_text())
    fused, _ = load(str(out))
    gap = np.abs(_logits(fused, tok) - _logits(with_adapter, tok)).mean()
    assert effect > 1e-3 and gap < 1e-3 * effect, (gap, effect)


TAGGED = [(u, f"<think>\n{a}\n</think>\n{a}") for u, a in ROWS]


def _first_token_prob(model, tokenizer, token: str) -> float:
    ids = model_io.chat_prompt(tokenizer, ROWS[0][0])
    logits = model(mx.array([ids]))[0, -1]  # (V,)
    probs = mx.softmax(logits.astype(mx.float32))
    return probs[tokenizer.encode(token, add_special_tokens=False)[0]].item()


def test_tag_rows_learn_at_their_own_rate_and_nothing_else_moves(tiny_model_dir, tmp_path):
    from sf_mlx.stages.sft import tag_token_ids, vocab_row_params

    model, tok = model_io.load(str(tiny_model_dir))
    model.unfreeze()
    tags = tag_token_ids(tok)
    assert len(tags) == 10  # the built-in tokenizer keeps every trace tag whole
    names = vocab_row_params(model)
    assert names == ["transformer.wte.weight", "lm_head.weight"]
    before = {k: np.array(v) for k, v in tree_flatten(model.parameters())}
    batches = make_batches(load_examples(tok, _write(tmp_path / "t.jsonl", TAGGED), 256)[0], 4, 0)
    cfg = SftConfig(method="full", learning_rate=0.0, tag_learning_rate=1e-2, iters=5, warmup=0)
    train(model, batches, [], cfg, seed=0, tag_ids=tags)
    after = {k: np.array(v) for k, v in tree_flatten(model.parameters())}
    others = np.setdiff1d(np.arange(before[names[0]].shape[0]), tags)
    for k in before:
        if k in names:  # only the rows of tags that occur in the traces moved
            assert np.array_equal(before[k][others], after[k][others]), k
            assert not np.array_equal(before[k][tags], after[k][tags]), k
        else:
            assert np.array_equal(before[k], after[k]), k


def test_a_tag_rate_teaches_the_first_tag_that_a_low_body_rate_cannot(tiny_model_dir, tmp_path):
    from sf_mlx.stages.sft import tag_token_ids

    path = _write(tmp_path / "t.jsonl", TAGGED)
    probs = {}
    for tag_lr in (0.0, 2e-2):
        model, tok = model_io.load(str(tiny_model_dir))
        model.unfreeze()
        batches = make_batches(load_examples(tok, path, 256)[0], 4, 0)
        cfg = SftConfig(
            method="full", learning_rate=1e-4, tag_learning_rate=tag_lr, iters=20, warmup=0
        )
        train(model, batches, [], cfg, seed=0, tag_ids=tag_token_ids(tok))
        probs[tag_lr] = _first_token_prob(model, tok, "<think>")
    assert probs[0.0] < 1e-3 and probs[2e-2] > 0.2, probs  # measured 4e-6 and 0.28


def test_a_tag_rate_needs_full_fine_tuning():
    with pytest.raises(ValueError, match="tag_learning_rate needs sft.method=full"):
        recipe_from_dict({"sft": {"method": "lora", "tag_learning_rate": 1e-2}})


def test_full_fine_tuning_of_a_half_precision_model_keeps_tiny_updates(tiny_model_dir, tmp_path):
    """At lr 1e-6 a bfloat16 weight would round most updates away; float32 master weights keep
    them (on a CPU `model.load` already gives float32; a GPU or Mac keeps bfloat16)."""
    from sf_mlx.stages.sft import fp32_master

    path = _write(tmp_path / "t.jsonl", ROWS)
    changed = {}
    for master in (False, True):
        model, tok = model_io.load(str(tiny_model_dir))
        model.set_dtype(mx.bfloat16)
        model.unfreeze()
        assert fp32_master(model) if master else True
        before = {k: np.array(v.astype(mx.float32)) for k, v in tree_flatten(model.parameters())}
        batches = make_batches(load_examples(tok, path, 256)[0], 4, 0)
        cfg = SftConfig(method="full", learning_rate=1e-6, iters=5, warmup=0)
        train(model, batches, [], cfg, seed=0)
        after = {k: np.array(v.astype(mx.float32)) for k, v in tree_flatten(model.parameters())}
        moved = sum(int((before[k] != after[k]).sum()) for k in before)
        changed[master] = moved / sum(v.size for v in before.values())
    # measured 0.5% and 77% (embedding rows of tokens absent from the rows get no gradient)
    assert changed[False] < 0.05 and changed[True] > 0.5, changed
    assert not fp32_master(model)  # already float32: nothing to cast
