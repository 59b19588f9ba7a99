"""The built-in base model's tokenizer: byte-level BPE, one token per digit, trace tags atomic.

Built with `tokenizers`, wrapped as a transformers fast tokenizer with a ChatML chat template so
`transformers.AutoTokenizer` and `mlx_lm.load` read it like any Hub tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

# SkillFactory's trace tags: single tokens, never split, never skipped when decoding.
TRACE_TAGS = (
    "<think>",
    "</think>",
    "<sample>",
    "</sample>",
    "<reflect>",
    "</reflect>",
    "<verdict>",
    "</verdict>",
    "<answer>",
    "</answer>",
)
BOS, EOS, PAD = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
SPECIAL = (PAD, BOS, EOS)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# A word's first letter (with the space before it) as a piece of its own: `Ġo` + `nly`.
INITIAL_LETTER = r" ?(?<![A-Za-z])[A-Za-z]"


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 640, initial_letters: bool = False
) -> Tokenizer:
    """Train a byte-level BPE on `texts`; digits are pre-split so each digit is one token.
    `initial_letters`: every word's first letter is its own token, so a model reads the first
    letter of a word it was given (acronyms) by copying, not by spelling a merged token."""
    tok = Tokenizer(models.BPE())
    steps = [
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ]
    if initial_letters:
        steps.insert(0, pre_tokenizers.Split(Regex(INITIAL_LETTER), behavior="isolated"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(steps)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TRACE_TAGS])
    return tok


def save_tokenizer(tok: Tokenizer, out_dir: Path) -> None:
    """Write tokenizer.json + tokenizer_config.json (+ special tokens map) via transformers."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=None,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out_dir))
