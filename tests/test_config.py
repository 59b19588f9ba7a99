"""Recipes: defaults, YAML and --set casting, clear one-line errors, resolved-recipe round trip."""

import dataclasses

import pytest

from sf_mlx.config import (
    SECTIONS,
    GrpoConfig,
    Recipe,
    apply_overrides,
    describe_fields,
    recipe_to_dict,
)
from sf_mlx.recipe_files import available_recipes, dump_recipe, load_recipe


@pytest.fixture
def recipes(tmp_path):
    d = tmp_path / "recipes"
    d.mkdir()
    (d / "tiny.yaml").write_text(
        "# a comment\n"
        "run:\n  name: tiny\n  seed: 3\n"
        "problems:\n  eval_num_args: [3, 4]\n  require_all: yes\n"
        "sft:\n  iters: 50\n  learning_rate: 1e-5\n"
        "grpo:\n  variant: dr_grpo\n"
        "rearrange:\n  format: '*C_full'\n"
        "evaluate:\n"  # an empty section keeps its defaults
    )
    (d / "other.yaml").write_text("sample:\n  n_samples: 2\n")
    return d


def test_defaults():
    r = Recipe()
    assert r.run.model == "builtin:small" and r.run.seed == 0
    assert r.problems.eval_num_args == (3, 4, 5, 6)
    assert r.sample.variants == ("original", "plan_and_execute", "alternatively", "rephrase")
    assert r.sft.method == "lora" and r.sft.learning_rate == 1e-4 and r.sft.num_layers == -1
    assert r.grpo.epsilon_high == 0.28 and r.grpo.lora_rank == 8
    assert r.evaluate.arms == ("base", "sft", "star", "sft_grpo", "rl_only", "star_grpo")
    assert list(SECTIONS) == [f.name for f in dataclasses.fields(Recipe)]


def test_every_field_has_a_default_and_help():
    rows = describe_fields()
    assert len(rows) == sum(len(dataclasses.fields(c)) for c in SECTIONS.values())
    assert all(r.help and r.type for r in rows)
    by_key = {r.key: r for r in rows}
    assert by_key["sft.iters"][1:3] == ("int", 200)
    assert by_key["problems.eval_num_args"].type == "tuple[int, ...]"
    assert "dr_grpo" in by_key["grpo.variant"].help


def test_yaml_values_are_cast(recipes):
    r = load_recipe("tiny", recipes_dir=recipes)
    assert r.run.name == "tiny" and r.run.seed == 3
    assert r.problems.eval_num_args == (3, 4) and r.problems.require_all is True
    assert r.sft.iters == 50
    assert r.sft.learning_rate == 1e-5 and isinstance(r.sft.learning_rate, float)
    assert r.grpo.variant == "dr_grpo" and r.rearrange.format == "*C_full"
    assert r.sample == Recipe().sample  # untouched sections keep defaults
    assert load_recipe(recipes / "other.yaml").sample.n_samples == 2  # a path works too


def test_set_overrides_are_cast():
    r = apply_overrides(
        Recipe(),
        [
            "sft.iters=50",
            "grpo.learning_rate=1e-5",
            "sft.scale=3",
            "problems.eval_num_args=3,4",
            "problems.ood_tasks=[acronym]",
            "problems.require_all=true",
            "rearrange.format=*C_full",
            "run.description=a = b",
            "run.seed=1e3",
        ],
    )
    assert r.sft.iters == 50
    assert r.grpo.learning_rate == 1e-5 and isinstance(r.grpo.learning_rate, float)
    assert r.sft.scale == 3.0 and isinstance(r.sft.scale, float)
    assert r.problems.eval_num_args == (3, 4)
    assert r.problems.ood_tasks == ("acronym",)
    assert r.problems.require_all is True
    assert r.run.description == "a = b" and r.run.seed == 1000
    assert apply_overrides(r, ["problems.require_all=0"]).problems.require_all is False


def test_overrides_apply_on_top_of_yaml(recipes):
    r = load_recipe("tiny", ["sft.iters=7"], recipes_dir=recipes)
    assert r.sft.iters == 7 and r.sft.learning_rate == 1e-5


@pytest.mark.parametrize(
    "override, message",
    [
        ("sft.itres=3", "unknown key sft.itres; did you mean sft.iters?"),
        ("sfx.iters=3", "did you mean sft?"),
        ("sft.iters=abc", "sft.iters='abc' is not a valid int"),
        ("sft.iters=2.5", "sft.iters='2.5' is not a valid int"),
        ("grpo.beta=lots", "grpo.beta='lots' is not a valid float"),
        ("problems.require_all=maybe", "problems.require_all='maybe' is not a valid bool"),
        (
            "problems.eval_num_args=3,x",
            "problems.eval_num_args='3,x' is not a valid tuple[int, ...]",
        ),
        ("sft.method=qlora", "sft.method='qlora'; expected one of lora, full"),
        ("grpo.variant=ppo", "expected one of grpo, dapo, dr_grpo"),
        ("grpo.temperature=0", "grpo.temperature=0.0; must be > 0"),
        ("sample.variants=original,odd", "sample.variants='odd'"),
        ("sft.iters=0", "sft.iters=0; must be >= 1"),
        ("sft.iters", "not section.key=value"),
        ("sft.learning_rate=nan", "sft.learning_rate=nan; expected a finite number"),
        ("grpo.learning_rate=inf", "grpo.learning_rate=inf; expected a finite number"),
        ("sample.variants=[]", "sample.variants is empty; expected one or more of original"),
        ("evaluate.arms=[]", "evaluate.arms is empty"),
    ],
)
def test_bad_overrides_give_one_clear_line(override, message):
    with pytest.raises(ValueError) as e:
        apply_overrides(Recipe(), [override])
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_bad_yaml_value_names_file_and_key(recipes):
    (recipes / "bad.yaml").write_text("sft:\n  itres: 5\n")
    with pytest.raises(
        ValueError, match=r"bad\.yaml: unknown key sft\.itres; did you mean sft\.iters"
    ):
        load_recipe("bad", recipes_dir=recipes)
    (recipes / "bad.yaml").write_text("grpo:\n  learning_rate: fast\n")
    with pytest.raises(ValueError, match=r"grpo\.learning_rate='fast'"):
        load_recipe("bad", recipes_dir=recipes)
    (recipes / "bad.yaml").write_text("spft:\n  iters: 5\n")
    with pytest.raises(ValueError, match="did you mean sft"):
        load_recipe("bad", recipes_dir=recipes)


def test_cross_field_check():
    with pytest.raises(ValueError, match="minibatch_prompts=9 > prompts_per_step=8"):
        GrpoConfig(minibatch_prompts=9)


def test_missing_recipe_lists_available(recipes):
    assert available_recipes(recipes) == ["other", "tiny"]
    with pytest.raises(ValueError, match="no recipe named 'tinny'.*available: other, tiny"):
        load_recipe("tinny", recipes_dir=recipes)
    with pytest.raises(ValueError, match="no recipe file"):
        load_recipe(recipes / "nope.yaml")


def test_dump_and_load_round_trip(recipes, tmp_path):
    r = load_recipe(
        "tiny", ["grpo.learning_rate=3e-6", "run.description=x: y # z"], recipes_dir=recipes
    )
    out = tmp_path / "run" / "recipe.yaml"
    dump_recipe(r, out, header="hardware: any\ntime: seconds")
    text = out.read_text()
    assert text.startswith("# ") and "# time: seconds" in text
    assert "  # LoRA rank\n  rank: 8\n" in text  # a help comment above each key
    assert load_recipe(out) == r
    d = recipe_to_dict(r)
    assert d["problems"]["eval_num_args"] == [3, 4]
    assert set(d) == set(SECTIONS) and all(
        len(d[s]) == len(dataclasses.fields(SECTIONS[s])) for s in d
    )
    assert load_recipe(out, ["sft.iters=9"]).sft.iters == 9


def test_sections_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Recipe().sft.iters = 3


def test_a_renamed_key_still_loads_an_older_recipe(recipes):
    (recipes / "old.yaml").write_text("grpo:\n  advantage: dr_grpo\n")
    assert load_recipe("old", recipes_dir=recipes).grpo.variant == "dr_grpo"


def test_ablation_recipes_are_countdown_small_plus_their_one_change():
    from sf_mlx.config import recipe_to_dict

    parent = recipe_to_dict(load_recipe("countdown-small"))
    changed = {}
    for name in ("ablation-no-order", "ablation-no-reflections", "ablation-single-variant"):
        child = recipe_to_dict(load_recipe(name))
        changed[name] = {
            f"{s}.{k}"
            for s, kv in child.items()
            for k, v in kv.items()
            if v != parent[s][k] and f"{s}.{k}" != "run.description"
        }
    assert changed["ablation-no-order"] == {"rearrange.format"}
    assert changed["ablation-no-reflections"] == {"rearrange.format"}
    # one variant instead of four, at the same number of samples per problem
    assert changed["ablation-single-variant"] == {"sample.variants", "sample.n_samples"}
    single = load_recipe("ablation-single-variant").sample
    small = load_recipe("countdown-small").sample
    assert len(single.variants) * single.n_samples == len(small.variants) * small.n_samples


def test_extends_merges_over_the_parent_and_refuses_a_cycle(recipes):
    (recipes / "child.yaml").write_text("extends: tiny\nsft:\n  iters: 7\n")
    child, parent = (
        load_recipe("child", recipes_dir=recipes),
        load_recipe("tiny", recipes_dir=recipes),
    )
    # every key but the changed one comes from the parent; the run's name is the child's own
    assert child.sft.iters == 7 and parent.run.name == "tiny" and child.run.name == ""
    named = dataclasses.replace(child.run, name=parent.run.name)
    assert dataclasses.replace(child, sft=parent.sft, run=named) == parent
    (recipes / "a.yaml").write_text("extends: b\n")
    (recipes / "b.yaml").write_text("extends: a\n")
    with pytest.raises(ValueError, match="cycle") as e:
        load_recipe("a", recipes_dir=recipes)
    assert "\n" not in str(e.value)
    (recipes / "orphan.yaml").write_text("extends: nope\n")
    with pytest.raises(ValueError, match="no recipe named 'nope'"):
        load_recipe("orphan", recipes_dir=recipes)
