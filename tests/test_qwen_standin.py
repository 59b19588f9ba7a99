"""A Qwen-style stand-in model through the whole pipeline, as a user with a real Hub model would
run it: the qwen2 architecture with random weights, a byte-level BPE tokenizer (trace tags are
several ordinary tokens), the ChatML template, and two end-of-sequence tokens (`<|im_end|>` and
`<|endoftext|>`, as Qwen2.5's generation config lists them).

Random weights never solve a problem, so the run starts from the released-schema fixture
(`import-raw`: its samples and reflections), then runs every later stage on the stand-in: the
model check, rearrange, SFT, STaR, the three GRPO arms, evaluation and the report; once with
LoRA SFT and full-parameter GRPO, once with full SFT and LoRA GRPO.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten

from sf_mlx.export import import_run
from sf_mlx.pipeline import open_run, run_recipe
from sf_mlx.records import EvalResult, Rollout
from sf_mlx.rundir import read_jsonl

pytestmark = pytest.mark.slow

FIXTURE = Path(__file__).parent / "fixtures" / "released_raw.jsonl"
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _corpus() -> list[str]:
    """Text to learn the byte-level merges from: questions and arithmetic, no trace tags."""
    from sf_mlx.tasks import get_task

    out = []
    for p in get_task("countdown").make_problems(300, 0, num_args=3, max_number=20):
        out += [p.question, f"Step 1: {p.data['numbers'][0]} + {p.data['numbers'][1]}"]
    out += [json.loads(line)["question"] for line in FIXTURE.read_text().splitlines()]
    return out


def make_standin(folder: Path) -> Path:
    """A qwen2 model folder with random weights and a Qwen-style tokenizer."""
    from mlx_lm.models import qwen2
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=700,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(_corpus(), trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tok.chat_template = CHATML
    tok.save_pretrained(folder)

    eos = [tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    config = {
        "model_type": "qwen2",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-6,
        "vocab_size": len(tok),
        "max_position_embeddings": 2048,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
        "eos_token_id": eos,
        "torch_dtype": "float32",
    }
    mx.random.seed(0)
    model = qwen2.Model(qwen2.ModelArgs.from_dict(config))
    mx.save_safetensors(str(folder / "model.safetensors"), dict(tree_flatten(model.parameters())))
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> Path:
    return make_standin(tmp_path_factory.mktemp("qwen-standin"))


def test_the_standin_is_qwen_shaped(standin):
    from sf_mlx import model as model_io
    from sf_mlx.stages.sft import tag_token_ids

    _, tok = model_io.load(str(standin))
    assert set(tok.eos_token_ids) == {tok.convert_tokens_to_ids(t) for t in SPECIALS[::2]}
    assert len(tok.encode("<sample>", add_special_tokens=False)) > 1  # a tag is several tokens
    assert tag_token_ids(tok) == []
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("sft_method, grpo_method", [("lora", "full"), ("full", "lora")])
def test_countdown_tiny_runs_end_to_end_on_the_standin(standin, tmp_path, sft_method, grpo_method):
    overrides = [
        f"run.model={standin}",
        f"sft.method={sft_method}",
        f"grpo.method={grpo_method}",
        "sft.learning_rate=1e-4",
        "problems.n_eval=4",
        "problems.eval_num_args=[3]",
        "problems.ood_tasks=[multiplication]",
        "sample.variants=[original]",
        "evaluate.max_tokens=48",
        "evaluate.budget=16",
        "grpo.max_tokens=48",
    ]
    run_dir = tmp_path / "run"
    open_run("countdown-tiny", overrides, run_dir)  # the recipe the import continues
    counts = import_run(FIXTURE, run_dir, "countdown-tiny", "countdown")
    assert counts["rl_problems"] > 0 and counts["eval_problems"] > 0
    run = run_recipe("countdown-tiny", overrides, run_dir=run_dir, log=lambda _: None)

    assert run.is_done("report")
    assert read_jsonl(run.path / "sft" / "train.jsonl") and read_jsonl(
        run.path / "star" / "train.jsonl"
    )
    trained = "adapters" if sft_method == "lora" else "model"
    assert (run.sft_dir / trained).is_dir() and (run.path / "star" / trained).is_dir()
    gen = "model" if grpo_method == "full" else "adapters"
    rollouts = []
    for arm in ("sft_grpo", "rl_only", "star_grpo"):
        assert (run.grpo_dir(arm) / gen).is_dir()
        rollouts += read_jsonl(run.rollouts_path(arm, 1), Rollout)
    # stopped completions end on either end-of-sequence token, never with its text
    assert any(not r.truncated for r in rollouts)
    assert not any(
        "<|im_end|>" in r.completion or "<|endoftext|>" in r.completion for r in rollouts
    )
    cells = list((run.eval_dir).rglob("*.jsonl"))
    assert len(cells) == 6 * 2 and all(read_jsonl(c, EvalResult) for c in cells)
