"""CLI tests (`CliRunner`): exit codes, one-line errors, printed content and files written.

Nothing here loads a model: the `recipe` test only gets as far as the failing `base` stage.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from sf_mlx.cli import app
from sf_mlx.tasks.countdown import check_answer

FIXTURE = Path(__file__).parent / "fixtures" / "released_raw.jsonl"
HEAVY = ("mlx.core", "transformers", "datasets")

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def error_line(result) -> str:
    """The single `error: ...` line a failing command writes to stderr (and nothing else)."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


# --- startup --------------------------------------------------------------------------------------


def test_import_and_help_stay_light():
    """A fresh interpreter: importing the CLI and printing --help never imports the heavy libs."""
    code = (
        "import json, sys\n"
        f"heavy = {HEAVY!r}\n"
        "import sf_mlx.cli\n"
        "after_import = [m for m in heavy if m in sys.modules]\n"
        "sys.argv = ['sf-mlx', '--help']\n"
        "try:\n"
        "    sf_mlx.cli.main()\n"
        "except SystemExit as e:\n"
        "    code = e.code\n"
        "after_help = [m for m in heavy if m in sys.modules]\n"
        "print(json.dumps([after_import, after_help, code]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    after_import, after_help, code = json.loads(proc.stdout.strip().splitlines()[-1])
    assert after_import == []
    assert after_help == []
    assert code in (0, None)


def test_help_lists_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    names = set(re.findall(r"^(?:│ |  )([a-z][a-z-]*)\s", result.stdout, re.MULTILINE))
    expected = {"tasks", "check", "bench", "base", "recipes", "recipe", "stage", "export"}
    assert expected | {"import-raw", "config"} <= names


# --- tasks ----------------------------------------------------------------------------------------

_PROBLEM_RE = re.compile(
    r"^\[(?P<id>[^\]]+)\]\nUsing the numbers \[(?P<numbers>[\d, ]+)\], create an equation that "
    r"equals (?P<target>\d+)\..*?\n  reference: (?P<reference>.+)$",
    re.MULTILINE,
)


def _shown_problems(stdout: str) -> list[tuple[str, list[int], int, str]]:
    return [
        (
            m["id"],
            [int(x) for x in m["numbers"].split(",")],
            int(m["target"]),
            m["reference"].strip(),
        )
        for m in _PROBLEM_RE.finditer(stdout)
    ]


def test_tasks_show_countdown_references_are_correct():
    result = invoke("tasks", "show", "countdown", "--num-args", "4", "-n", "3", "--seed", "0")
    assert result.exit_code == 0, result.output
    problems = _shown_problems(result.stdout)
    assert len(problems) == 3
    assert len({pid for pid, *_ in problems}) == 3
    for _, numbers, target, reference in problems:
        assert len(numbers) == 4
        assert check_answer(reference, numbers, target), (numbers, target, reference)


def test_tasks_show_is_seeded():
    args = ("tasks", "show", "countdown", "--num-args", "4", "-n", "3")
    first = invoke(*args, "--seed", "0")
    again = invoke(*args, "--seed", "0")
    other = invoke(*args, "--seed", "1")
    assert first.exit_code == again.exit_code == other.exit_code == 0
    assert first.stdout == again.stdout
    assert _shown_problems(first.stdout) != _shown_problems(other.stdout)


def test_tasks_show_param_max_number():
    result = invoke("tasks", "show", "countdown", "-n", "5", "-p", "max_number=10")
    assert result.exit_code == 0, result.output
    problems = _shown_problems(result.stdout)
    assert len(problems) == 5
    for _, numbers, target, reference in problems:
        assert max(numbers) <= 10
        assert check_answer(reference, numbers, target)


def test_tasks_show_bad_num_args():
    result = invoke("tasks", "show", "countdown", "--num-args", "9")
    assert result.exit_code == 2
    assert "9" in error_line(result)
    assert result.stdout == ""


def test_tasks_show_unknown_task_suggests():
    result = invoke("tasks", "show", "countdwn")
    assert result.exit_code == 2
    line = error_line(result)
    assert "countdwn" in line and "did you mean 'countdown'" in line


def test_tasks_list_shows_params():
    result = invoke("tasks", "list")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    start = lines.index("countdown")
    params = []
    for line in lines[start + 1 :]:
        if not line.startswith("    "):
            break
        params.append(line.strip().split(":")[0])
    assert {"num_args", "min_number", "max_number", "min_target", "max_target"} <= set(params)
    assert {"multiplication", "acronym"} <= set(lines)


# --- check ----------------------------------------------------------------------------------------

COUNTDOWN = ("check", "countdown", "--numbers", "3,5,7", "--target", "22")


def test_check_countdown_correct():
    result = invoke(*COUNTDOWN, "3*5+7")
    assert result.exit_code == 0
    assert result.stdout.startswith("CORRECT")


def test_check_countdown_wrong_arithmetic():
    result = invoke(*COUNTDOWN, "3*5+8")
    assert result.exit_code == 1
    assert result.stdout.startswith("WRONG")


@pytest.mark.parametrize(
    ("response", "code"),
    [
        ("First <answer>3+5+7</answer>, no: <answer>3*5+7</answer>", 0),
        ("First <answer>3*5+7</answer>, then <answer>3+5+7</answer>", 1),
    ],
)
def test_check_grades_last_answer_block(response, code):
    result = invoke(*COUNTDOWN, response)
    assert result.exit_code == code
    last = re.findall(r"<answer>(.*?)</answer>", response)[-1]
    assert repr(last) in result.stdout


def test_check_never_executes_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    result = invoke(*COUNTDOWN, f"__import__('os').system('touch {marker}')")
    assert result.exit_code == 1
    assert result.stdout.startswith("WRONG")
    assert not marker.exists()


def test_check_bad_numbers():
    result = invoke("check", "countdown", "--numbers", "3,x", "--target", "22", "3")
    assert result.exit_code == 2
    assert "3,x" in error_line(result)


def test_check_missing_target():
    result = invoke("check", "countdown", "--numbers", "3,5", "3+5")
    assert result.exit_code == 2
    assert "--target" in error_line(result)


def test_check_multiplication_and_acronym():
    assert invoke("check", "multiplication", "--a", "12", "--b", "34", "408").exit_code == 0
    assert invoke("check", "multiplication", "--a", "12", "--b", "34", "409").exit_code == 1
    words = ("check", "acronym", "--words", "pin,alive,ivory,notice")
    assert invoke(*words, "pain").exit_code == 0
    assert invoke(*words, "pane").exit_code == 1


def test_check_unsupported_task():
    result = invoke("check", "gsm8k", "42")
    assert result.exit_code == 2
    line = error_line(result)
    assert "gsm8k" in line and "countdown" in line


# --- recipes and config ---------------------------------------------------------------------------


def test_recipes_lists_with_descriptions():
    result = invoke("recipes")
    assert result.exit_code == 0
    rows = dict(line.split(None, 1) for line in result.stdout.splitlines() if line.strip())
    names = {"countdown-tiny", "countdown-small", "countdown-paper"}
    ablations = {name for name in rows if name.startswith("ablation-")}
    assert names <= set(rows) and len(ablations) >= 3
    for name in names | ablations:
        assert rows[name].strip() and "invalid" not in rows[name], (name, rows[name])


def _config(*sets: str) -> dict:
    result = invoke("config", "countdown-small", *[x for s in sets for x in ("--set", s)])
    assert result.exit_code == 0, result.output
    return yaml.safe_load(result.stdout)


def test_config_override():
    assert _config()["sft"]["epochs"] == 2  # recipes/countdown-small.yaml
    resolved = _config("sft.epochs=0.5")
    assert resolved["sft"]["epochs"] == 0.5
    assert resolved["run"]["model"] == "builtin:small"
    assert resolved["grpo"]["steps"] == 30


def test_config_float_from_exponent():
    lr = _config("grpo.learning_rate=2e-6")["grpo"]["learning_rate"]
    assert isinstance(lr, float) and lr == 2e-06


def test_config_typo_names_nearest_key():
    result = invoke("config", "countdown-small", "--set", "sft.itres=5")
    assert result.exit_code == 2
    assert "did you mean sft.iters" in error_line(result)
    assert result.stdout == ""


def test_config_bad_choice_names_choices():
    result = invoke("config", "countdown-small", "--set", "sft.method=foo")
    assert result.exit_code == 2
    line = error_line(result)
    assert "foo" in line and "lora" in line and "full" in line


# --- import-raw, stage rearrange, export ----------------------------------------------------------


@pytest.fixture
def imported_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    result = invoke("import-raw", FIXTURE, "--run-dir", run)
    assert result.exit_code == 0, result.output
    assert "stage rearrange" in result.stdout
    return run


def test_import_rearrange_export(imported_run: Path, tmp_path: Path):
    run = imported_run
    assert len(read_jsonl(run / "samples.jsonl")) == 7
    # the imported questions are the SFT pool; RL and evaluation pools come from the recipe
    from sf_mlx.recipe_files import load_recipe

    recipe = load_recipe(str(run / "recipe.yaml"))
    pools = read_jsonl(run / "problems.jsonl")
    splits = [p["split"] for p in pools]
    sft_questions = {p["question"] for p in pools if p["split"] == "sft"}
    assert splits.count("rl") == recipe.problems.n_rl
    assert {s for s in splits if s.startswith("eval/")} == {
        f"eval/countdown-{k}" for k in recipe.problems.eval_num_args
    } | {f"eval/{t}" for t in recipe.problems.ood_tasks}
    assert all(p["question"] not in sft_questions for p in pools if p["split"] != "sft")
    result = invoke("stage", "rearrange", "--run-dir", run)
    assert result.exit_code == 0, result.output

    traces = read_jsonl(run / "traces.jsonl")
    train = read_jsonl(run / "sft" / "train.jsonl")
    assert traces and train
    for row in train:
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
        assert row["messages"][0]["content"].startswith("Using the numbers")
        assert row["messages"][1]["content"].startswith("<think>")

    out = tmp_path / "out"
    result = invoke(
        "export", "--run-dir", run, "--out", out, "--what", "traces", "--format", "sharegpt"
    )
    assert result.exit_code == 0, result.output
    shared = sorted(out.rglob("*.jsonl"))
    assert len(shared) == 1 and str(shared[0]) in result.stdout
    rows = read_jsonl(shared[0])
    assert len(rows) == len(traces)
    for row, trace in zip(rows, traces, strict=True):
        assert [t["role"] for t in row["conversations"]] == ["user", "assistant"]
        assert row["conversations"][1]["content"].startswith("<think>")
        # the released data's tag for a `*C_full` trace of N attempts: "NC"
        n = sum(seg["kind"] == "sample" for seg in trace["segments"])
        assert row["sft_template_type_idx"] == f"{n}C"

    result = invoke("export", "--run-dir", run, "--out", out, "--what", "traces", "--format", "hf")
    assert result.exit_code == 0, result.output
    parquet = sorted(out.rglob("*.parquet"))
    assert len(parquet) == 1 and str(parquet[0]) in result.stdout
    datasets = pytest.importorskip("datasets")
    back = datasets.Dataset.from_parquet(str(parquet[0]), cache_dir=str(tmp_path / "cache"))
    assert len(back) == len(traces)
    assert {"text", "messages"} <= set(back.column_names)
    assert all(text.startswith("<think>") for text in back["text"])


def test_import_into_existing_run_refused(imported_run: Path):
    before = (imported_run / "samples.jsonl").read_bytes()
    result = invoke("import-raw", FIXTURE, "--run-dir", imported_run)
    assert result.exit_code == 2
    assert "samples.jsonl" in error_line(result)
    assert (imported_run / "samples.jsonl").read_bytes() == before


def test_stage_without_recipe(tmp_path: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = invoke("stage", "rearrange", "--run-dir", empty)
    assert result.exit_code == 2
    assert "recipe.yaml" in error_line(result)


def test_export_unknown_what(imported_run: Path, tmp_path: Path):
    out = tmp_path / "out"
    result = invoke("export", "--run-dir", imported_run, "--out", out, "--what", "nope")
    assert result.exit_code == 2
    line = error_line(result)
    assert "nope" in line and "traces" in line
    assert not out.exists() or not any(out.iterdir())


# --- recipe ---------------------------------------------------------------------------------------


def test_recipe_bad_model_keeps_problems(tmp_path: Path, monkeypatch):
    """`problems` runs (cheap), `base` fails in one line; a changed recipe is then refused."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_constants = sys.modules.get("huggingface_hub.constants")
    if hub_constants is not None:  # the env var is read when huggingface_hub is imported
        monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    run = tmp_path / "run"
    model = "/nonexistent/folder"
    args = ("recipe", "countdown-small", "--run-dir", run, "--set", f"run.model={model}")

    result = invoke(*args)
    assert result.exit_code == 2
    line = error_line(result)
    assert model in line and "local" in line and "folder" in line

    problems = read_jsonl(run / "problems.jsonl")
    ids: dict[str, set[str]] = {}
    for p in problems:
        ids.setdefault(p["split"].split("/")[0], set()).add(p["problem_id"])
    # recipes/countdown-small.yaml: 150 SFT, 200 RL, 200 eval x countdown 3-6 + 100 x 2 OOD
    assert len(ids["sft"]) == 150 and len(ids["rl"]) == 200 and len(ids["eval"]) == 1000
    assert not ids["sft"] & ids["rl"] and not ids["sft"] & ids["eval"]
    assert not ids["rl"] & ids["eval"]
    assert (run / "done" / "problems.json").exists()
    assert yaml.safe_load((run / "recipe.yaml").read_text())["run"]["model"] == model

    written = (run / "problems.jsonl").read_bytes()
    result = invoke(*args, "--set", "sft.iters=3")
    assert result.exit_code == 2
    line = error_line(result)
    assert "different recipe" in line and "sft.iters" in line
    assert (run / "problems.jsonl").read_bytes() == written
    # a run's name and description are labels: changing them resumes it (to its model error)
    result = invoke(*args, "--set", "run.description=the same run, described again")
    assert "different recipe" not in error_line(result) and model in error_line(result)


@pytest.mark.slow
def test_a_built_wheel_finds_the_recipes_outside_the_source_tree(tmp_path):
    """`pip install .` / pipx: the recipes ship inside the wheel and load from the install."""
    root = Path(__file__).resolve().parents[1]
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", tmp_path / "dist", root], check=True)
    (wheel,) = (tmp_path / "dist").glob("sf_mlx-*.whl")
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", site, wheel], check=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    code = (
        "import sf_mlx.recipe_files as c, sys; assert str(c.RECIPES_DIR).startswith(sys.argv[1]); "
        "from sf_mlx.cli import app; app(['config', 'ablation-no-order'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(site)],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "format: no_order" in out.stdout and "epochs: 2" in out.stdout


@pytest.mark.parametrize(
    "content, message",
    [
        ("5", "expected a list of rows or a mapping of columns, got int"),
        ('["a"]', "expected a list of rows or a mapping of columns, got list"),
    ],
)
def test_import_raw_of_a_non_table_json_is_one_line(tmp_path: Path, content: str, message: str):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    result = invoke("import-raw", bad, "--run-dir", tmp_path / "run")
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run" / "samples.jsonl").exists()


def test_import_raw_of_an_unknown_task_is_refused_before_writing(tmp_path: Path):
    result = invoke("import-raw", FIXTURE, "--run-dir", tmp_path / "run", "--task", "nope")
    assert result.exit_code == 2 and "unknown task 'nope'" in result.output
    assert not (tmp_path / "run").exists()
