"""Recipes: every shipped recipe validates; overrides, unknown keys and impossible values give clear errors."""


import pytest

from textdvae import recipe as recipe_lib
from textdvae.recipe import RecipeError

from conftest import ROOT
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


def test_there_are_recipes():
    assert any(p.name == "quickstart.yaml" for p in RECIPES)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_validates_and_starts_with_its_command(path):
    recipe = recipe_lib.load(path)
    assert recipe.output_dir
    first = path.read_text().splitlines()[0]
    assert first.startswith("# textdvae train recipes/") and path.name in first


def test_overrides_are_typed_and_dotted(tmp_path):
    r = recipe_lib.load(ROOT / "recipes/quickstart.yaml", [
        "output_dir=runs/x", "train.max_steps=200", "model.encoder_type=transformer", "train.lr=3e-4",
        "data.data_files.train=other.txt", "model.adaptive_softmax_cutoffs=[10, 20]"])
    assert r.output_dir == "runs/x" and r.train.max_steps == 200 and r.model.encoder_type == "transformer"
    assert r.train.lr == pytest.approx(3e-4) and r.data.data_files["train"] == "other.txt"
    assert r.data.data_files["test"] == "data/test.jsonl"  # siblings of an overridden key survive
    assert r.model.adaptive_softmax_cutoffs == [10, 20]
    assert r.raw["train"]["max_steps"] == 200 and r.raw["model"]["encoder_type"] == "transformer"


@pytest.mark.parametrize("override,message", [
    ("train.max_stepz=3", "did you mean train.max_steps"),
    ("modle.num_latents=3", "did you mean model"),
    ("model.num_latent=3", "did you mean model.num_latents"),
    ("model.num_categories=1", "num_categories"),
    ("model.num_latents=0", "num_latents"),
    ("train.tau_min=0", "tau"),
    ("train.beta_max=-1", "beta_max"),
    ("train.lr=0", "train.lr"),
    ("train.lr=fast", "train.lr"),
    ("train.batch_size=0", "train.batch_size"),
    ("train.iw_temperature=0", "train.iw_temperature must be > 0"),
    ("model.encoder_type=lstm", "encoder_type"),
    ("model.estimator=reinmax", "reinmax needs a temperature >= 1"),
    ("train.beta_schedule=cosine", "beta_schedule"),
    ("data.max_length=1", "max_length"),
    ("tokenizer.kind=pretrained", "name_or_path"),
    ("tokenizer.sample_seed=-1", "tokenizer.sample_seed must be an integer >= 0"),
    ("novalue", "key=value"),
])
def test_bad_recipes_name_the_key(override, message):
    with pytest.raises(RecipeError, match=message):
        recipe_lib.load(ROOT / "recipes/quickstart.yaml", [override])


def test_type_check_reads_the_annotations_themselves():
    """Fields typed list[str], dict[str, int] | None, int, float and str | None: each value is checked against its
    own annotation (matching annotations as strings took "list[str]" for a str field)."""
    from dataclasses import dataclass

    @dataclass
    class Section:
        names: list[str]
        counts: dict[str, int] | None
        steps: int
        lr: float
        tag: str | None

    def check(**changes):
        values = dict(names=["a", "b"], counts=None, steps=3, lr=1, tag=None) | changes
        section = Section(**values)
        recipe_lib._check_types("s", section)
        return section

    assert check().lr == 1.0 and isinstance(check().lr, float) and check(lr="3e-4").lr == 3e-4
    assert check(counts={"x": 1}, tag="t").names == ["a", "b"]
    for field, bad, message in [("names", "a", "s.names must be list[str], got 'a'"),
                                ("names", ["a", 2], "s.names must be list[str], got ['a', 2]"),
                                ("counts", {"x": "many"}, "s.counts must be dict[str, int] or null"),
                                ("steps", True, "s.steps must be int, got True"),
                                ("steps", 2.5, "s.steps must be int"),
                                ("lr", "fast", "s.lr must be float, got 'fast'"),
                                ("tag", 3, "s.tag must be str or null, got 3")]:
        with pytest.raises(RecipeError) as err:
            check(**{field: bad})
        assert message in str(err.value), (field, str(err.value))


def test_missing_or_malformed_recipe_files(tmp_path):
    with pytest.raises(RecipeError, match="not found"):
        recipe_lib.load(tmp_path / "nope.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(RecipeError, match="mapping"):
        recipe_lib.load(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: {num_latents: [\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        recipe_lib.load(broken)
    no_out = tmp_path / "noout.yaml"
    no_out.write_text("model: {num_latents: 2}\n")
    with pytest.raises(RecipeError, match="output_dir"):
        recipe_lib.load(no_out)


def test_readme_ptb_table_is_the_recorded_rows():
    """The README's and RESULTS.md's PTB table is benchmarks/results/ptb.json as benchmarks/ptb.py renders it."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "benchmarks/ptb.py", "--check"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
