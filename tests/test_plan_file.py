"""Reading a plan file: every kind of bad file is one PlanError line naming the file (and the line), and reading is
bounded (size, nesting, values with aliases expanded) and linear in the file, whatever the file holds."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from schedcmp import plan as plan_module
from schedcmp.cli import app
from schedcmp.errors import PlanError
from schedcmp.plan import MAX_PLAN_BYTES, MAX_PLAN_DEPTH, MAX_PLAN_VALUES, build_plan, read_plan_file

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
NOT_TEXT = "quote it if it is meant as text"
# The billion laughs: nine levels of nine aliases of the level above, 9**9 (387 million) values written in 370 bytes.
BOMB = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{level}: &{level} [{', '.join([f'*{below}'] * 9)}]\n" for below, level in zip("abcdefgh", "bcdefghi", strict=True)
)


def write(tmp_path: Path, content: str | bytes, name: str = "plan.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def message(path: Path) -> str:
    with pytest.raises(PlanError) as error:
        read_plan_file(path)
    return str(error.value)


def nested(levels: int, inner: str = "x") -> str:
    """A plan whose one key holds ``levels - 1`` lists inside each other (the plan's mapping is the first level)."""
    return "prompt: " + "[" * (levels - 1) + inner + "]" * (levels - 1) + "\n"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("prompt: x\n1: x\n", f"{{path}}:2: a key must be text, got '1' (read as a number); {NOT_TEXT}"),
        ("prompt: x\n1.5: x\n", f"{{path}}:2: a key must be text, got '1.5' (read as a number); {NOT_TEXT}"),
        ("prompt: x\nnull: x\n", f"{{path}}:2: a key must be text, got 'null' (read as null); {NOT_TEXT}"),
        ("prompt: x\n? \n: x\n", f"{{path}}:2: a key must be text, got '' (read as null); {NOT_TEXT}"),
        ("prompt: x\ntrue: x\n", f"{{path}}:2: a key must be text, got 'true' (read as true/false); {NOT_TEXT}"),
        ("prompt: x\n2024-01-01: x\n", f"{{path}}:2: a key must be text, got '2024-01-01' (read as a date); {NOT_TEXT}"),
        ("prompt: x\n[a]: b\n", "{path}:2: a key must be text, got a list"),
        ("prompt: x\n? {a: 1}\n: b\n", "{path}:2: a key must be text, got a mapping"),
        ("prompt: x\nruns:\n  - {scheduler: ddim, steps: 5, 3: x}\n",
         f"{{path}}:3: a key must be text, got '3' (read as a number); {NOT_TEXT}"),
        ("prompt: x\nseed: 1\nseed: 2\n",
         "{path}:3: duplicate key 'seed' (first on line 2); YAML would keep only the last, so give each key once"),
        ("prompt: x\n'seed': 1\n\"seed\": 2\n",
         "{path}:3: duplicate key 'seed' (first on line 2); YAML would keep only the last, so give each key once"),
        ("prompt: x\nruns: [{scheduler: ddim, scheduler: euler}]\n",
         "{path}:2: duplicate key 'scheduler' (first on line 2); YAML would keep only the last, so give each key once"),
        ("- a\n- b\n", "{path}:1: a plan must be a YAML mapping of keys (model, prompt, negative_prompt, prompts, negative_prompts, prompt_sr, seed, seeds, size, "
         "guidance, device, dtype, mode, max_batch, generator_device, clip_skip, prediction_type, vae, schedulers, schedules, option_axes, steps, runs, reference, "
         "target_error)"),
        ("just words\n", "{path}:1: a plan must be a YAML mapping of keys (model, prompt, negative_prompt, prompts, negative_prompts, prompt_sr, seed, seeds, size, "
         "guidance, device, dtype, mode, max_batch, generator_device, clip_skip, prediction_type, vae, schedulers, schedules, option_axes, steps, runs, reference, "
         "target_error)"),
        ("--- !!set {a, b}\n", "{path}:1: a plan must be a YAML mapping of keys (model, prompt, negative_prompt, prompts, negative_prompts, prompt_sr, seed, "
         "seeds, size, guidance, device, dtype, mode, max_batch, generator_device, clip_skip, prediction_type, vae, schedulers, schedules, option_axes, steps, runs, "
         "reference, target_error)"),
        ("prompt: x\nruns: &r [*r]\n", "{path}:2: the alias *r is used inside the value it names (a recursive YAML "
         "alias); a plan cannot contain itself"),
        ("prompt: x\nseed: *nowhere\n", "{path}:2: invalid YAML: found undefined alias 'nowhere'"),
        ("prompt: &p x\nmodel: &p y\n",
         "{path}:2: the anchor &p is defined twice (first on line 1); give each anchor its own name"),
        ("prompt: x\n---\nprompt: y\n",
         "{path}:2: invalid YAML: expected a single document in the stream but found another document"),
        ("prompt: x\nseed: 2024-02-30\n",
         "{path}:2: invalid YAML: cannot read '2024-02-30' as !!timestamp (day is out of range for month)"),
        ("prompt: x\nseed: !!timestamp soon\n", "{path}:2: invalid YAML: cannot read 'soon' as !!timestamp"),
        ("prompt: x\nseed: !!int eight\n",
         "{path}:2: invalid YAML: cannot read 'eight' as !!int (invalid literal for int() with base 10: 'eight')"),
        ("prompt: x\nseed: " + "9" * 5000 + "\n",
         f"{{path}}:2: invalid YAML: cannot read '{'9' * 40}...' as !!int (Exceeds the limit (4300 digits) for "
         "integer string conversion: value has 5000 digits; use sys.set_int_max_str_digits() to increase the limit)"),
        ("prompt: !!python/object/apply:os.system [ls]\n",
         "{path}:1: invalid YAML: could not determine a constructor for the tag "
         "'tag:yaml.org,2002:python/object/apply:os.system'"),
        ("prompt: x\nseed: \x01\n",
         "{path}:2: invalid YAML: unacceptable character #x0001: special characters are not allowed"),
        ("prompt: x\x00\n", "{path}:1: invalid YAML: unacceptable character #x0000: special characters are not allowed"),
        ("prompt: x\n  bad: [\n", "{path}:2: invalid YAML: mapping values are not allowed here"),
        (b"prompt: \xe9t\xe9\n", "{path}: not a UTF-8 text file; expected a YAML plan"),
        (nested(MAX_PLAN_DEPTH + 1),
         "{path}:1: the plan nests lists and mappings more than 50 levels deep; a plan needs five at most"),
        (BOMB, "{path}:7: the plan expands to more than 1048576 values (YAML aliases repeat too much); a plan is a few "
         "dozen keys"),
    ],
    ids=["int-key", "float-key", "null-key", "empty-key", "bool-key", "date-key", "list-key", "mapping-key",
         "int-key-in-a-run", "duplicate-key", "duplicate-quoted-key", "duplicate-key-in-flow", "top-level-list",
         "top-level-scalar", "top-level-set", "recursive-alias", "undefined-alias", "anchor-twice", "two-documents",
         "impossible-date", "not-a-timestamp", "not-an-int", "int-too-long", "python-tag", "control-character",
         "nul-character", "yaml-syntax", "not-utf-8", "too-deep", "billion-laughs"],
)
def test_bad_plan_file_messages(tmp_path: Path, content: str | bytes, expected: str) -> None:
    path = write(tmp_path, content)
    assert message(path) == expected.format(path=path)


@pytest.mark.parametrize("levels", [5_000, 100_000])
@pytest.mark.parametrize(("opening", "closing"), [("[", "]"), ("{a: ", "}")], ids=["lists", "mappings"])
def test_deep_flow_nesting_is_refused_at_its_line_without_recursion(tmp_path, levels, opening, closing) -> None:
    path = write(tmp_path, "prompt: x\nsize: " + opening * levels + "1" + closing * levels + "\n")
    assert message(path) == f"{path}:2: the plan nests lists and mappings more than 50 levels deep; a plan needs five at most"


def test_deep_block_nesting_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "prompt: x\nsize:\n" + "- " * 5_000 + "x\n")
    assert message(path).startswith(f"{path}:3: the plan nests lists and mappings more than 50 levels deep")


def test_nesting_up_to_the_limit_is_read(tmp_path: Path) -> None:
    located = read_plan_file(write(tmp_path, nested(MAX_PLAN_DEPTH)))
    value = located.data["prompt"]
    for _ in range(MAX_PLAN_DEPTH - 2):
        (value,) = value
    assert value == ["x"]


def test_nesting_counts_what_aliases_repeat(tmp_path: Path) -> None:
    """Each line wraps the one above in a list: a chain of 60 aliases nests 60 deep once expanded."""
    chain = "prompt:\n  - &l0 [x]\n" + "".join(f"  - &l{i} [*l{i - 1}]\n" for i in range(1, 60))
    path = write(tmp_path, chain)
    assert message(path) == f"{path}:50: the plan nests lists and mappings more than 50 levels deep; a plan needs five at most"


def test_merge_chains_are_bounded_like_nesting(tmp_path: Path) -> None:
    chain = "prompt:\n  - &m0 {k: 1}\n" + "".join(f"  - &m{i} {{<<: *m{i - 1}}}\n" for i in range(1, 60))
    assert "more than 50 levels deep" in message(write(tmp_path, chain))


def test_the_bomb_is_refused_at_the_limit_without_expanding(tmp_path: Path) -> None:
    """Ten levels (3.5 billion values) are refused where the count passes the limit, long before the last line."""
    bomb = BOMB + "j: &j [" + ", ".join(["*i"] * 9) + "]\n"
    assert message(write(tmp_path, bomb)).startswith(f"{tmp_path / 'plan.yaml'}:7: the plan expands to more than")


@pytest.mark.parametrize(("limit", "refused"), [(18, False), (17, True)])
def test_values_count_keys_collections_and_every_alias_use(tmp_path, monkeypatch, limit, refused) -> None:
    # the plan's mapping, prompt, x, size, [a, b, c] (4), runs, its list, and the list twice more (2 x 4): 18 values
    content = "prompt: x\nsize: &s [a, b, c]\nruns: [*s, *s]\n"
    monkeypatch.setattr(plan_module, "MAX_PLAN_VALUES", limit)
    path = write(tmp_path, content)
    if refused:
        assert message(path) == (f"{path}:3: the plan expands to more than 17 values (YAML aliases repeat too much); "
                                 "a plan is a few dozen keys")
    else:
        assert read_plan_file(path).data["runs"] == [["a", "b", "c"], ["a", "b", "c"]]


def test_a_plan_with_too_many_values_and_no_aliases_is_not_blamed_on_aliases(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(plan_module, "MAX_PLAN_VALUES", 10)
    path = write(tmp_path, "prompt: x\nsteps: [1, 2, 3, 4, 5, 6, 7, 8]\n")
    assert message(path) == f"{path}:2: the plan holds more than 10 values; a plan is a few dozen keys"


def test_the_value_limit_admits_any_file_of_the_largest_size() -> None:
    assert MAX_PLAN_VALUES >= MAX_PLAN_BYTES  # a file without aliases holds at most one value per byte


def test_a_file_over_the_size_limit_is_refused_without_being_read(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    with path.open("wb") as stream:
        stream.truncate(8 * 2**30)  # sparse: 8 GiB that would take a while to read, let alone parse
    assert message(path) == (f"{path}: the file is 8589934592 bytes (8192.0 MiB), more than the 1048576 bytes (1 MiB) "
                             "a plan may be (a plan is a few dozen keys)")


@pytest.mark.parametrize(("size", "refused"), [(100, False), (101, True)])
def test_size_limit_boundary(tmp_path, monkeypatch, size, refused) -> None:
    monkeypatch.setattr(plan_module, "MAX_PLAN_BYTES", 100)
    path = write(tmp_path, "prompt: x\n#" + "-" * (size - 12) + "\n")
    assert path.stat().st_size == size
    if refused:
        assert message(path).startswith(f"{path}: the file is 101 bytes (0.0 MiB), more than the 100 bytes")
    else:
        assert read_plan_file(path).data == {"prompt": "x"}


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_an_endless_device_is_read_only_up_to_the_limit() -> None:
    assert message(Path("/dev/zero")) == ("/dev/zero: the file holds more than the 1048576 bytes (1 MiB) a plan may be "
                                          "(a plan is a few dozen keys)")


@pytest.mark.parametrize("given", ["configs", "configs/"])
def test_a_directory_names_a_yaml_file_inside(tmp_path, monkeypatch, given) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    for name in ("seed-doc.yaml", "steps.yml", "notes.txt"):
        (tmp_path / "configs" / name).write_text("prompt: x\n")
    (tmp_path / "configs" / "a-folder.yaml").mkdir()
    assert message(Path(given)) == "plan file configs/ is a directory; pass a YAML file such as configs/seed-doc.yaml"


def test_a_directory_without_yaml_files(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    assert message(Path("empty")) == ("plan file empty/ is a directory; pass a YAML file (a plan file, not the folder it "
                                      "is in)")


@pytest.mark.parametrize("name", ["missing.yaml", "plan.yaml/inside.yaml"])
def test_a_missing_file(tmp_path: Path, monkeypatch, name: str) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "prompt: x\n")
    assert message(Path(name)) == f"plan file {name} does not exist"


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="needs a user that permissions apply to")
def test_an_unreadable_file(tmp_path: Path) -> None:
    path = write(tmp_path, "prompt: x\n")
    path.chmod(0)
    assert message(path) == f"plan file {path} cannot be read: permission denied"


def test_permission_denied_whoever_runs_the_tests(tmp_path: Path, monkeypatch) -> None:
    path = write(tmp_path, "prompt: x\n")

    def refuse(self: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", refuse)
    assert message(path) == f"plan file {path} cannot be read: permission denied"


@pytest.mark.parametrize("config", sorted(CONFIGS.glob("*.yaml")), ids=lambda path: path.name)
def test_the_shipped_plans_read_as_pyyaml_reads_them(config: Path) -> None:
    assert read_plan_file(config).data == yaml.safe_load(config.read_text(encoding="utf-8"))


def test_every_key_and_item_has_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "prompt: x\nruns:\n  - scheduler: euler\n    steps: [1,\n      2]\n  - ddim\n"
                           "reference: {scheduler: dpm, options: {a: 1}}\n")
    assert read_plan_file(path).lines == {
        (): 1, ("prompt",): 1, ("runs",): 2, ("runs", 0): 3, ("runs", 0, "scheduler"): 3, ("runs", 0, "steps"): 4,
        ("runs", 0, "steps", 0): 4, ("runs", 0, "steps", 1): 5, ("runs", 1): 6, ("reference",): 7,
        ("reference", "scheduler"): 7, ("reference", "options"): 7, ("reference", "options", "a"): 7,
    }


def test_an_alias_keeps_its_own_line_and_is_not_walked_again(tmp_path: Path) -> None:
    path = write(tmp_path, "prompt: x\nruns:\n  - &r {scheduler: ddim, steps: 5}\n  - *r\n")
    located = read_plan_file(path)
    assert located.lines[("runs", 1)] == 4
    assert ("runs", 1, "steps") not in located.lines  # errors inside it fall back to the alias's line
    assert [run.steps for run in build_plan(path).runs] == [5, 5]


def test_merge_keys_still_work_and_errors_in_them_name_the_run(tmp_path: Path) -> None:
    base = "prompt: x\nruns:\n  - &base {scheduler: euler, steps: 5}\n  - <<: *base\n    steps: 10\n"
    assert [run.steps for run in build_plan(write(tmp_path, base)).runs] == [5, 10]
    path = write(tmp_path, base.replace("steps: 10", "steps: 0"))
    with pytest.raises(PlanError) as error:
        build_plan(path)
    assert str(error.value) == f"{path}:4: steps must be at least 1, got 0"


@pytest.mark.parametrize(
    "content",
    [BOMB, "prompt: x\nsize: " + "[" * 100_000 + "]" * 100_000 + "\n", "prompt: x\nseed: 1\nseed: 2\n",
     "prompt: x\n1: x\n", "- a\n"],
    ids=["billion-laughs", "deep", "duplicate-key", "int-key", "top-level-list"],
)
def test_the_command_line_prints_one_error_line(tmp_path: Path, content: str) -> None:
    path = write(tmp_path, content)
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {path}:")
    assert result.stderr.count("\n") == 1 and not result.stdout
    assert not (tmp_path / "out").exists()
