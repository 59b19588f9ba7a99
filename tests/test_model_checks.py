"""The `base` stage refuses, in one line, a model the pipeline cannot use."""

from __future__ import annotations

import shutil

import pytest

from sf_mlx import model as model_io
from sf_mlx.stages.base_check import check_usable, is_quantized


def _copy(src, dst, drop=()):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*drop))
    return dst


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_a_usable_model_passes(tiny_model_dir):
    m, tok = model_io.load(str(tiny_model_dir))
    check_usable("tiny", m, tok, "full")
    assert not is_quantized(m)


def test_a_model_without_a_chat_template_is_refused(tiny_model_dir, tmp_path):
    folder = _copy(tiny_model_dir, tmp_path / "m", drop=("chat_template.jinja",))
    m, tok = model_io.load(str(folder))
    with pytest.raises(model_io.ModelLoadError) as err:
        check_usable(str(folder), m, tok, "lora")
    assert "no chat template" in _one_line(err)


def test_a_folder_without_tokenizer_files_is_refused_before_sampling(tiny_model_dir, tmp_path):
    folder = _copy(tiny_model_dir, tmp_path / "m", drop=("tokenizer*", "chat_template.jinja"))
    with pytest.raises(model_io.ModelLoadError) as err:
        m, tok = model_io.load(str(folder))
        check_usable(str(folder), m, tok, "lora")
    assert str(folder) in _one_line(err)


def test_full_fine_tuning_of_a_quantized_model_is_refused(tiny_model_dir):
    import mlx.nn as nn

    m, tok = model_io.load(str(tiny_model_dir))
    nn.quantize(m, group_size=32, bits=4)
    assert is_quantized(m)
    check_usable("q", m, tok, "lora")  # LoRA trains float adapters: fine
    with pytest.raises(model_io.ModelLoadError) as err:
        check_usable("q", m, tok, "full")
    assert "quantized" in _one_line(err) and "sft.method=lora" in str(err.value)


def test_a_mistyped_relative_path_is_not_tried_as_a_hub_id(tmp_path, monkeypatch):
    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(model_io.ModelLoadError) as err:
        model_io.load("models/qwen-typo")
    assert "does not exist" in _one_line(err) and "models" in str(err.value)
