"""YAML plan files and command-line flags -> one validated, frozen Plan. All input validation lives here."""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import itertools
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .axes import parse_axis
from .core.configuration import init_keys
from .core.errors import ConfigError, UnknownSchedulerError
from .core.schedulers import SchedulerPreset, resolve_scheduler, schedule_overrides
from .errors import PlanError

PREDICTION_TYPES = ("epsilon", "v_prediction")  # what a UNet predicts: the noise, or v (Salimans & Ho 2022)

PLAN_KEYS = (
    "model",
    "prompt",
    "negative_prompt",
    "prompts",
    "negative_prompts",
    "prompt_sr",
    "seed",
    "seeds",
    "size",
    "guidance",
    "device",
    "dtype",
    "mode",
    "max_batch",
    "generator_device",
    "clip_skip",
    "prediction_type",
    "vae",
    "schedulers",
    "schedules",
    "option_axes",
    "steps",
    "runs",
    "reference",
    "target_error",
)
RUN_KEYS = ("scheduler", "schedule", "steps", "sigmas", "timesteps", "label", "options")
REFERENCE_KEYS = ("scheduler", "schedule", "steps", "label", "options")
# Steps of a reference run named without a count ("--reference dpm"): many, so it is close to converged.
DEFAULT_REFERENCE_STEPS = 200
DEFAULT_TARGET_ERROR = 0.05
BUILTIN_PROMPT = "a red circle on a blue background"  # the prompt of a plan on builtin:shapes that names none
# Arguments of `step` that are not per-run options a user can set.
_STEP_PLUMBING = {"self", "model_output", "timestep", "sample", "generator", "return_dict", "variance_noise"}
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "fp32", "fp16", "bf16")
MODES = ("sequential", "batched")
MAX_SIZE = 4096
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class RunSpec:
    """One cell of the comparison: a scheduler preset, its schedule type, options, a step count and a label;
    ``sigmas`` / ``timesteps`` are a custom schedule (then ``steps`` is its length)."""

    scheduler: str
    preset: SchedulerPreset
    steps: int
    label: str
    config_options: Mapping[str, Any] = field(default_factory=dict)
    step_options: Mapping[str, Any] = field(default_factory=dict)
    schedule: str | None = None
    sigmas: tuple[float, ...] | None = None
    timesteps: tuple[float, ...] | None = None

    @property
    def row_label(self) -> str:
        """The label without the step count: the grid row this run belongs to."""
        return self.label

    def to_json(self) -> dict[str, Any]:
        custom = {key: list(value) for key, value in (("sigmas", self.sigmas), ("timesteps", self.timesteps))
                  if value is not None}
        return {
            "scheduler": self.scheduler,
            "class": self.preset.cls.__name__,
            "tool": self.preset.tool,
            "schedule": self.schedule,
            "steps": self.steps,
            "label": self.label,
            "options": {**self.preset.options, **self.config_options, **self.step_options},
            **custom,
        }


@dataclass(frozen=True)
class ReferenceSpec:
    """What every run is measured against: the model's exact ODE solution, or one run with many steps."""

    kind: Literal["exact", "run"]
    run: RunSpec | None = None

    @property
    def label(self) -> str:
        if self.run is None:
            return "exact float64 ODE solution"
        return f"{self.run.label} {self.run.steps} steps"

    def to_json(self) -> dict[str, Any]:
        return {**(self.run.to_json() if self.run else {}), "kind": self.kind, "label": self.label}


@dataclass(frozen=True)
class Plan:
    """Everything one invocation compares: shared prompt, seed, size, guidance, model, and the runs."""

    model: str
    prompt: str
    negative_prompt: str
    seed: int
    size: tuple[int, int] | None
    guidance: float | None  # None until with_model_defaults: the model's default
    device: str
    dtype: str
    mode: Literal["sequential", "batched"]
    max_batch: int | None
    runs: tuple[RunSpec, ...]
    layout: Literal["matrix", "list"]
    generator_device: str | None = None
    clip_skip: int | None = None
    prediction_type: str | None = None  # a checkpoint file's UNet output, where the file cannot tell (SD 2.x)
    vae: str | None = None  # a VAE file or folder decoding instead of the model's
    reference: ReferenceSpec | None = None
    target_error: float = DEFAULT_TARGET_ERROR
    source: Path | None = None
    seeds: tuple[int, ...] = ()  # the seed axis of a sweep (empty: just ``seed``)
    guidances: tuple[float | None, ...] = ()  # the guidance axis (empty: just ``guidance``)
    prompt_variants: tuple[tuple[str, str], ...] = ()  # the (prompt, negative prompt) axis (empty: just those)

    def with_model_defaults(self, pipeline: Any) -> Plan:
        """The plan with what it left to the model filled in from the loaded pipeline (its default guidance)."""
        if self.guidance is not None and None not in self.guidances:
            return self
        default = pipeline.default_guidance
        return dataclasses.replace(self, guidance=default if self.guidance is None else self.guidance,
                                   guidances=tuple(default if g is None else g for g in self.guidances))

    @property
    def is_sweep(self) -> bool:
        """Whether the plan has more than one page: several seeds or guidance scales."""
        return len(self.seeds) > 1 or len(self.guidances) > 1 or len(self.prompt_variants) > 1

    def pages(self) -> list[Plan]:
        """One plan per (guidance, prompt, seed) of the sweep, guidance outermost, seed innermost; each is what
        running that page alone would be, so a cell's image does not depend on the sweep around it."""
        variants = self.prompt_variants or ((self.prompt, self.negative_prompt),)
        return [dataclasses.replace(self, seed=seed, guidance=guidance, prompt=prompt, negative_prompt=negative,
                                    seeds=(seed,), guidances=(guidance,), prompt_variants=((prompt, negative),))
                for guidance in (self.guidances or (self.guidance,)) for prompt, negative in variants
                for seed in (self.seeds or (self.seed,))]

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "seed": self.seed,
            "seeds": list(self.seeds or (self.seed,)),
            "size": list(self.size) if self.size else None,
            "guidance": self.guidance,
            "guidances": list(self.guidances or (self.guidance,)),
            "prompt_variants": [list(v) for v in self.prompt_variants or ((self.prompt, self.negative_prompt),)],
            "device": self.device,
            "dtype": self.dtype,
            "mode": self.mode,
            "max_batch": self.max_batch,
            "generator_device": self.generator_device,
            "clip_skip": self.clip_skip,
            "prediction_type": self.prediction_type,
            "vae": self.vae,
            "layout": self.layout,
            "reference": self.reference.to_json() if self.reference else None,
            "target_error": self.target_error,
            "source": str(self.source) if self.source else None,
            "runs": [run.to_json() for run in self.runs],
        }


class _Located:
    """A plan's raw values with the line each came from, for error messages."""

    def __init__(self, path: Path | None, data: dict[str, Any], lines: dict[tuple, int], prefix: str = ""):
        self.path, self.data, self.lines, self.prefix = path, data, lines, prefix

    def error(self, message: str, *where: Any) -> PlanError:
        line = None
        for depth in range(len(where), -1, -1):
            line = self.lines.get(tuple(where[:depth]))
            if line is not None:
                break
        return PlanError(self.prefix + message, self.path, line if self.path else None)


# A plan is a few dozen keys; these bounds keep a hostile or mistaken file from costing more than a moment.
MAX_PLAN_BYTES = 1024 * 1024  # 1 MiB, checked before the file is read
MAX_PLAN_DEPTH = 50  # lists and mappings inside each other, aliases expanded; a plan needs five at most
# Values (keys, scalars, lists, mappings) with every alias expanded: no more than a file of the largest size can
# write out without aliases, so aliases can never make a plan bigger than writing it out would.
MAX_PLAN_VALUES = MAX_PLAN_BYTES
_DIRECTORY_SCAN = 1000  # entries of a directory looked at for a YAML file to suggest
_KEY_TAGS = ("tag:yaml.org,2002:str", "tag:yaml.org,2002:merge")  # text, and the << of a merge
_READ_AS = {"int": "a number", "float": "a number", "bool": "true/false", "null": "null", "timestamp": "a date"}


class _PlanLoader(yaml.SafeLoader):
    """PyYAML's safe loader whose value errors (a bad date, an over-long number) are YAML errors with a line."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """The Python value of ``node``; a value PyYAML cannot build is a ConstructorError at its line."""
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except Exception as err:  # ValueError (2020-02-30, a 5000-digit int), AttributeError (!!timestamp x), ...
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            why = f" ({_one_line(err)})" if isinstance(err, ValueError) else ""
            message = f"cannot read {_shown(node)} as {tag}{why}"
            raise yaml.constructor.ConstructorError(None, None, message, node.start_mark) from None


class _Open:
    """A list or mapping being composed: where it is, and what the bounds need to know about it."""

    __slots__ = ("anchor", "first", "height", "key", "keys", "node", "prefix")

    def __init__(self, node: yaml.CollectionNode, anchor: str | None, prefix: tuple, first: int):
        self.node, self.anchor, self.prefix, self.first = node, anchor, prefix, first
        self.height = 0  # of the tallest child so far (a scalar is 0, a list of scalars 1)
        self.key: yaml.ScalarNode | None = None  # a mapping's key waiting for its value
        self.keys: dict[str, int] = {}  # a mapping's keys so far -> their lines


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def _shown(node: yaml.Node) -> str:
    """A short description of a node for a message: a scalar's text (cut at 40 characters), else its kind."""
    if isinstance(node, yaml.ScalarNode):
        value = node.value if len(node.value) <= 40 else node.value[:40] + "..."
        return repr(value)
    return "a list" if isinstance(node, yaml.SequenceNode) else "a mapping"


def _read_text(path: Path) -> str:
    """The plan file's text: refused, in one line, when missing, a directory, unreadable, too big or not UTF-8."""
    try:
        with path.open("rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            if size > MAX_PLAN_BYTES:  # a regular file: refused before reading
                raise _too_big(path, size)
            data = stream.read(MAX_PLAN_BYTES + 1)  # a pipe or device has no size: read at most one byte too many
    except (FileNotFoundError, NotADirectoryError):
        raise PlanError(f"plan file {path} does not exist") from None
    except IsADirectoryError:
        raise _directory(path) from None
    except PermissionError:
        raise PlanError(f"plan file {path} cannot be read: permission denied") from None
    except OSError as err:
        raise PlanError(f"plan file {path} cannot be read: {_one_line(err.strerror or err)}") from None
    if len(data) > MAX_PLAN_BYTES:
        raise _too_big(path, None)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise PlanError("not a UTF-8 text file; expected a YAML plan", path) from None


def _too_big(path: Path, size: int | None) -> PlanError:
    """The message for a file over MAX_PLAN_BYTES (``size`` None: a pipe or device that gave more)."""
    limit = f"{MAX_PLAN_BYTES} bytes ({MAX_PLAN_BYTES / 2**20:g} MiB)"
    what = f"is {size} bytes ({size / 2**20:.1f} MiB), more" if size is not None else "holds more"
    return PlanError(f"the file {what} than the {limit} a plan may be (a plan is a few dozen keys)", path)


def _too_deep(path: Path, line: int) -> PlanError:
    message = f"the plan nests lists and mappings more than {MAX_PLAN_DEPTH} levels deep; a plan needs five at most"
    return PlanError(message, path, line)


def _directory(path: Path) -> PlanError:
    """The message for a directory given as the plan: it names a YAML file inside, if it finds one."""
    shown = str(path).rstrip("/") + "/"
    try:
        with os.scandir(path) as entries:
            names = sorted(
                entry.name
                for entry in itertools.islice(entries, _DIRECTORY_SCAN)
                if entry.name.endswith((".yaml", ".yml")) and entry.is_file()
            )
    except OSError:
        names = []
    example = f"such as {path / names[0]}" if names else "(a plan file, not the folder it is in)"
    return PlanError(f"plan file {shown} is a directory; pass a YAML file {example}")


def _compose(loader: yaml.SafeLoader, path: Path, lines: dict[tuple, int]) -> yaml.Node | None:
    """The document's node graph from PyYAML's event stream, in one linear pass and without recursion.

    On the way it fills ``lines`` (the line of every key and list item, by its path of keys and indexes; the
    inside of an alias is not walked again: its path keeps the alias's line) and refuses, at their line, more
    nesting than MAX_PLAN_DEPTH, more values than MAX_PLAN_VALUES once aliases are expanded (counted from the
    size of each anchored value, never by expanding), a recursive alias, a key that is not text and a key given
    twice. Mirrors PyYAML's Composer otherwise (tags, anchors, a single document)."""
    anchors: dict[str, tuple[yaml.Node, int | None, int]] = {}  # name -> node, expanded size (None: open), height
    stack: list[_Open] = []
    root = None
    total = 0  # values so far, aliases expanded
    aliased = False
    while loader.check_event():
        event = loader.get_event()
        kind = type(event)
        if kind is yaml.SequenceEndEvent or kind is yaml.MappingEndEvent:
            done = stack.pop()
            done.node.end_mark = event.end_mark
            height = done.height + 1
            if done.anchor is not None:
                anchors[done.anchor] = (done.node, total - done.first, height)
            if stack and stack[-1].height < height:
                stack[-1].height = height
            continue
        if kind is yaml.DocumentStartEvent and root is not None:
            raise yaml.composer.ComposerError("expected a single document in the stream", root.start_mark,
                                              "but found another document", event.start_mark)
        if kind not in (yaml.ScalarEvent, yaml.SequenceStartEvent, yaml.MappingStartEvent, yaml.AliasEvent):
            continue  # the stream's and the document's start and end
        line = event.start_mark.line + 1
        if kind is yaml.AliasEvent:
            if event.anchor not in anchors:
                raise yaml.composer.ComposerError(None, None, f"found undefined alias {event.anchor!r}",
                                                  event.start_mark)
            node, size, height = anchors[event.anchor]
            if size is None:
                raise PlanError(f"the alias *{event.anchor} is used inside the value it names (a recursive YAML "
                                "alias); a plan cannot contain itself", path, line)
            total += size
            aliased = True
            if len(stack) + height > MAX_PLAN_DEPTH:
                raise _too_deep(path, line)
            if stack and stack[-1].height < height:
                stack[-1].height = height
        else:
            tag = event.tag
            if kind is yaml.ScalarEvent:
                if tag is None or tag == "!":
                    tag = loader.resolve(yaml.ScalarNode, event.value, event.implicit)
                node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark, style=event.style)
            else:
                node_class = yaml.SequenceNode if kind is yaml.SequenceStartEvent else yaml.MappingNode
                if tag is None or tag == "!":
                    tag = loader.resolve(node_class, None, event.implicit)
                node = node_class(tag, [], event.start_mark, None, flow_style=event.flow_style)
            if event.anchor is not None:
                if event.anchor in anchors:
                    first = anchors[event.anchor][0].start_mark.line + 1
                    raise PlanError(f"the anchor &{event.anchor} is defined twice (first on line {first}); give "
                                    "each anchor its own name", path, line)
                anchors[event.anchor] = (node, 1, 0) if kind is yaml.ScalarEvent else (node, None, 0)
            total += 1
        if total > MAX_PLAN_VALUES:
            cause = "expands to" if aliased else "holds"
            why = " (YAML aliases repeat too much)" if aliased else ""
            raise PlanError(f"the plan {cause} more than {MAX_PLAN_VALUES} values{why}; a plan is a few dozen keys",
                            path, line)

        parent = stack[-1] if stack else None
        if parent is None:
            root, prefix = node, ()
            lines[prefix] = line
        elif parent.key is None and isinstance(parent.node, yaml.MappingNode):  # a key
            _check_key(node, parent, path, line)
            parent.key = node
            lines[(*parent.prefix, node.value)] = line
            continue
        elif parent.key is not None:  # a mapping's value: its path keeps the key's line
            prefix = (*parent.prefix, parent.key.value)
            parent.node.value.append((parent.key, node))
            parent.key = None
        else:
            prefix = (*parent.prefix, len(parent.node.value))
            parent.node.value.append(node)
            lines[prefix] = line
        if kind is yaml.SequenceStartEvent or kind is yaml.MappingStartEvent:
            if len(stack) >= MAX_PLAN_DEPTH:
                raise _too_deep(path, line)
            stack.append(_Open(node, event.anchor, prefix, total - 1))
    return root


def _check_key(node: yaml.Node, mapping: _Open, path: Path, line: int) -> None:
    """Refuse a key that is not text (1:, null:, [a]:) and a key the mapping already has."""
    if not isinstance(node, yaml.ScalarNode):
        raise PlanError(f"a key must be text, got {_shown(node)}", path, line)
    if node.tag not in _KEY_TAGS:
        read_as = _READ_AS.get(node.tag.rpartition(":")[2], node.tag)
        raise PlanError(f"a key must be text, got {_shown(node)} (read as {read_as}); quote it if it is meant as "
                        "text", path, line)
    if node.tag == _KEY_TAGS[0]:
        if node.value in mapping.keys:
            raise PlanError(f"duplicate key {node.value!r} (first on line {mapping.keys[node.value]}); YAML would "
                            "keep only the last, so give each key once", path, line)
        mapping.keys[node.value] = line


def read_plan_file(path: Path) -> _Located:
    """Parse a YAML plan, keeping the line of every key so later errors can name it."""
    text = _read_text(path)
    loader = None
    try:
        loader = _PlanLoader(text)  # checks the characters first (a ReaderError)
        lines: dict[tuple, int] = {}
        root = _compose(loader, path, lines)
        if root is not None and not isinstance(root, yaml.MappingNode):
            raise PlanError(f"a plan must be a YAML mapping of keys ({', '.join(PLAN_KEYS)})", path, 1)
        data = {} if root is None else loader.construct_document(root)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        problem = " ".join(filter(None, [err.context, err.problem]))
        raise PlanError(f"invalid YAML: {_one_line(problem)}", path, mark.line + 1 if mark else None) from None
    except yaml.reader.ReaderError as err:
        line = text.count("\n", 0, err.position) + 1
        character = err.character if isinstance(err.character, int) else ord(err.character)
        raise PlanError(f"invalid YAML: unacceptable character #x{character:04x}: {err.reason}", path, line) from None
    except yaml.YAMLError as err:
        raise PlanError(f"invalid YAML: {_one_line(err)}", path) from None
    finally:
        if loader is not None:
            loader.dispose()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PlanError(f"a plan must be a YAML mapping of keys ({', '.join(PLAN_KEYS)})", path, 1)
    return _Located(path, data, lines)


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? " if close else ""


def _check_keys(plan: _Located, mapping: Mapping, allowed: Sequence[str], what: str, *where: Any) -> None:
    for key in mapping:
        if key not in allowed:
            raise plan.error(
                f"unknown {what} key {key!r}; {_suggest(str(key), allowed)}allowed: {', '.join(allowed)}", *where, key
            )


def _is_whole(value: Any) -> bool:
    """An int from YAML or a flag (YAML's true/false are bools, which Python counts as ints: not here)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """An int or a float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _items(value: Any) -> list[Any]:
    """'a,b' / [a, b] / a -> the list of items (a comma-separated flag or a YAML list or scalar)."""
    return value.split(",") if isinstance(value, str) else value if isinstance(value, list) else [value]


def parse_int_list(value: Any, what: str) -> list[int]:
    """'20,30' / 20 / [20, 30] -> [20, 30]; anything else is a ValueError naming ``what``."""
    result = []
    for item in _items(value):
        text = item.strip() if isinstance(item, str) else item
        if not (_is_whole(text) or (isinstance(text, str) and re.fullmatch(r"-?\d+", text))):
            raise ValueError(f"{what} must be whole numbers, got {item!r}")
        result.append(int(text))
    return result


def parse_name_list(value: Any, what: str = "schedulers", one: str = "scheduler") -> list[str]:
    """'ddim,euler' / ['ddim', 'DPM++ 2M Karras'] -> a list of names."""
    names = [str(item).strip() for item in _items(value) if str(item).strip()]
    if not names:
        raise ValueError(f"{what} must name at least one {one}")
    return names


def parse_size(value: Any) -> tuple[int, int]:
    """'512x768' or 512 -> (width, height): multiples of 8 from 8 to 4096."""
    if _is_whole(value):
        width = height = value
    else:
        match = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", str(value))
        if not match:
            raise ValueError(f"size must look like WIDTHxHEIGHT (e.g. 512x512), got {value!r}")
        width, height = int(match[1]), int(match[2])
    for side in (width, height):
        if side < 8 or side > MAX_SIZE or side % 8:
            raise ValueError(f"size sides must be multiples of 8 from 8 to {MAX_SIZE}, got {width}x{height}")
    return width, height


def _split_options(plan: _Located, preset: SchedulerPreset, options: Any, *where: Any) -> tuple[dict, dict]:
    """Sort a run's options into scheduler-config keys and `step` arguments, rejecting unknown ones."""
    if options is None:
        return {}, {}
    if not isinstance(options, Mapping):
        raise plan.error(f"options must be a mapping of option: value, got {options!r}", *where)
    config_keys = sorted(init_keys(preset.cls))
    step_keys = sorted(set(inspect.signature(preset.cls.step).parameters) - _STEP_PLUMBING)
    config_options, step_options = {}, {}
    for key, value in options.items():
        if key in config_keys:
            config_options[key] = value
        elif key in step_keys:
            step_options[key] = value
        else:
            allowed = config_keys + step_keys
            raise plan.error(
                f"{preset.cls.__name__} has no option {key!r}; {_suggest(str(key), allowed)}"
                f"options: {', '.join(allowed)}",
                *where,
                key,
            )
    try:
        preset.build({}, **config_options)
    except ConfigError as err:
        raise plan.error(str(err), *where) from None
    return config_options, step_options


def _custom_schedule(plan: _Located, preset: SchedulerPreset, key: str, value: Any,
                     *where: Any) -> tuple[float, ...] | None:
    """A run's explicit ``sigmas:`` or ``timesteps:`` list, refused for a class whose set_timesteps takes none."""
    if value is None:
        return None
    if not isinstance(value, list) or len(value) < (2 if key == "sigmas" else 1) or not all(map(_is_number, value)):
        need = "at least two numbers, largest first" if key == "sigmas" else "numbers, largest first"
        raise plan.error(f"{key} must be a list of {need}, got {value!r}", *where, key)
    if key not in inspect.signature(preset.cls.set_timesteps).parameters:
        raise plan.error(f"{preset.name} ({preset.cls.__name__}) takes no custom {key}", *where, key)
    return tuple(float(v) for v in value)


def _make_run(plan: _Located, name: Any, steps: Any, label: Any, options: Any, *where: Any,
              schedule: Any = None, sigmas: Any = None, timesteps: Any = None) -> RunSpec:
    if not isinstance(name, str) or not name.strip():
        raise plan.error(f"scheduler must be a scheduler name, got {name!r}", *where)
    try:
        preset = resolve_scheduler(name)
    except UnknownSchedulerError as err:
        raise plan.error(str(err), *where) from None
    if schedule is not None and (not isinstance(schedule, str) or not schedule.strip()):
        raise plan.error(f"schedule must be a schedule type name, got {schedule!r}", *where)
    try:
        schedule_options = schedule_overrides(preset, schedule)
    except (ConfigError, UnknownSchedulerError) as err:
        raise plan.error(str(err), *where) from None
    custom_sigmas = _custom_schedule(plan, preset, "sigmas", sigmas, *where)
    custom_timesteps = _custom_schedule(plan, preset, "timesteps", timesteps, *where)
    if custom_sigmas is not None and custom_timesteps is not None:
        raise plan.error("give sigmas or timesteps, not both", *where)
    if custom_sigmas is not None or custom_timesteps is not None:
        steps = len(custom_sigmas) - 1 if custom_sigmas is not None else len(custom_timesteps)
    if not _is_whole(steps):
        raise plan.error(f"steps must be a whole number, got {steps!r}", *where)
    if steps < 1:
        raise plan.error(f"steps must be at least 1, got {steps}", *where)
    config_options, step_options = _split_options(plan, preset, options, *where, "options")
    config_options = {**schedule_options, **config_options}
    if label is None:
        label = name if schedule is None else f"{name} {schedule}"
    return RunSpec(name, preset, steps, str(label), config_options, step_options, schedule, custom_sigmas,
                   custom_timesteps)


def build_plan(path: Path | None = None, overrides: Mapping[str, Any] | None = None) -> Plan:
    """The plan from a YAML file (optional) with command-line ``overrides`` (None values mean 'not given')."""
    plan = read_plan_file(path) if path is not None else _Located(None, {}, {})
    _check_keys(plan, plan.data, PLAN_KEYS, "plan")
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    raw = {**plan.data, **given}
    flag = _Located(None, raw, {})  # errors in flag values carry no file position

    def source(key: str) -> _Located:
        return flag if key in given else plan

    def value(key: str, default: Any) -> Any:
        return raw.get(key, default) if raw.get(key) is not None else default

    model = str(value("model", "builtin:shapes"))
    builtin = model.startswith("builtin:")
    prompt = value("prompt", BUILTIN_PROMPT if builtin else None)
    if raw.get("prompt") is None and isinstance(raw.get("prompts"), list) and raw["prompts"]:
        prompt = raw["prompts"][0]  # checked with the others below
    if prompt is None:
        raise PlanError("no prompt: pass --prompt TEXT or set prompt: in the plan file (only builtin:shapes has a "
                        "default prompt)")
    if not isinstance(prompt, str):
        raise source("prompt").error(f"prompt must be text, got {prompt!r}", "prompt")
    negative_prompt = value("negative_prompt", "")
    if not isinstance(negative_prompt, str):
        message = f"negative_prompt must be text, got {negative_prompt!r}"
        raise source("negative_prompt").error(message, "negative_prompt")
    variants = _prompt_variants(source, raw, prompt, negative_prompt)
    prompt, negative_prompt = variants[0]

    seeds = _seeds(source, raw)
    seed = seeds[0]
    guidances = _guidances(source("guidance"), value("guidance", None))
    guidance = guidances[0]

    size = None
    if value("size", None) is not None:
        try:
            size = parse_size(raw["size"])
        except ValueError as err:
            raise source("size").error(str(err), "size") from None

    choices = {"device": DEVICES, "dtype": DTYPES, "mode": MODES}
    picked = {}
    for key, allowed in choices.items():
        picked[key] = value(key, allowed[0])
        if picked[key] not in allowed:
            raise source(key).error(f"{key} must be one of {', '.join(allowed)}; got {picked[key]!r}", key)
    max_batch = value("max_batch", None)
    if max_batch == "auto":
        max_batch = None
    if max_batch is not None and (not _is_whole(max_batch) or max_batch < 1):
        message = f"max_batch must be 'auto' or a whole number >= 1, got {max_batch!r}"
        raise source("max_batch").error(message, "max_batch")

    generator_device = value("generator_device", None)
    if generator_device is not None and generator_device not in DEVICES[1:]:
        message = f"generator_device must be one of {', '.join(DEVICES[1:])}; got {generator_device!r}"
        raise source("generator_device").error(message, "generator_device")
    vae = value("vae", None)
    if vae is not None and (not isinstance(vae, str) or not vae.strip()):
        raise source("vae").error(f"vae must be the path of a VAE file or folder, got {vae!r}", "vae")
    prediction_type = value("prediction_type", None)
    if prediction_type not in (None, *PREDICTION_TYPES):
        message = f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {prediction_type!r}"
        raise source("prediction_type").error(message, "prediction_type")
    clip_skip = value("clip_skip", None)
    if clip_skip is not None and (not _is_whole(clip_skip) or clip_skip < 0):
        raise source("clip_skip").error(f"clip_skip must be a whole number >= 0, got {clip_skip!r}", "clip_skip")

    reference = value("reference", "exact" if builtin else None)
    if reference in ("auto", True):  # the model's own converged answer where it has one, else DPM-Solver++ 2M
        reference = "exact" if builtin else f"dpm:{DEFAULT_REFERENCE_STEPS}"
    reference = _reference(source("reference"), reference)
    target_error = value("target_error", DEFAULT_TARGET_ERROR)
    if not _is_number(target_error) or not target_error > 0:
        message = f"target_error must be a number > 0 (a latent RMSE), got {target_error!r}"
        raise source("target_error").error(message, "target_error")

    runs, layout = _runs(plan, raw, given)
    return Plan(
        model=model,
        prompt=prompt,
        negative_prompt=negative_prompt,
        seed=seed,
        size=size,
        guidance=guidance,
        device=picked["device"],
        dtype=picked["dtype"],
        mode=picked["mode"],
        max_batch=max_batch,
        runs=tuple(runs),
        layout=layout,
        generator_device=generator_device,
        clip_skip=clip_skip or None,
        prediction_type=prediction_type,
        vae=vae,
        reference=reference,
        target_error=float(target_error),
        source=path,
        seeds=tuple(seeds) if len(seeds) > 1 else (),
        guidances=tuple(guidances) if len(guidances) > 1 else (),
        prompt_variants=tuple(variants) if len(variants) > 1 else (),
    )


def _texts(where: _Located, value: Any, key: str) -> list[str]:
    """A YAML list of texts (or one text)."""
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(item, str) for item in items):
        raise where.error(f"{key} must be a list of texts, got {value!r}", key)
    return items


def _prompt_variants(source: Any, raw: dict[str, Any], prompt: str, negative: str) -> list[tuple[str, str]]:
    """The (prompt, negative prompt) pairs of a sweep: ``prompts:`` x ``negative_prompts:``, or A1111's Prompt
    S/R (``prompt_sr: [search, replace, ...]``: the first value is replaced by each value, the first included, in
    the prompt and the negative prompt alike); one pair without either."""
    if raw.get("prompt_sr") is not None:
        if raw.get("prompts") is not None:
            raise source("prompt_sr").error("give prompts or prompt_sr, not both", "prompt_sr")
        value = raw["prompt_sr"]
        words = [w.strip() for w in value.split(",")] if isinstance(value, str) else _texts(
            source("prompt_sr"), value, "prompt_sr")
        words = [w for w in words if w]
        if len(words) < 2:
            raise source("prompt_sr").error("prompt_sr needs the text to search for and at least one replacement, "
                                            f"got {value!r}", "prompt_sr")
        if words[0] not in prompt and words[0] not in negative:
            raise source("prompt_sr").error(f"prompt_sr: {words[0]!r} is not in the prompt or the negative prompt",
                                            "prompt_sr")
        return [(prompt.replace(words[0], w), negative.replace(words[0], w)) for w in dict.fromkeys(words)]
    prompts = _texts(source("prompts"), raw["prompts"], "prompts") if raw.get("prompts") is not None else [prompt]
    negatives = [negative]
    if raw.get("negative_prompts") is not None:
        negatives = _texts(source("negative_prompts"), raw["negative_prompts"], "negative_prompts")
    return [(p, n) for p in dict.fromkeys(prompts) for n in dict.fromkeys(negatives)]


def _seeds(source: Any, raw: dict[str, Any]) -> list[int]:
    """``seeds:`` (a list or A1111 ranges: 1-8, 1-16 (+2)) or the single ``seed:`` (8 when neither is given)."""
    if raw.get("seeds") is not None and raw.get("seed") is not None:
        raise source("seeds").error("give seed (one) or seeds (a sweep), not both", "seeds")
    key = "seeds" if raw.get("seeds") is not None else "seed"
    if key == "seed":
        seed = raw.get("seed", 8) if raw.get("seed") is not None else 8
        if not _is_whole(seed) or not 0 <= seed <= MAX_SEED:
            raise source("seed").error(f"seed must be a whole number from 0 to {MAX_SEED}, got {seed!r}", "seed")
        return [int(seed)]
    try:
        seeds = parse_axis(raw["seeds"], "seeds", whole=True)
    except ValueError as err:
        raise source("seeds").error(str(err), "seeds") from None
    bad = [s for s in seeds if not 0 <= s <= MAX_SEED]
    if bad:
        raise source("seeds").error(f"seeds must lie from 0 to {MAX_SEED}, got {bad[0]}", "seeds")
    if len(set(seeds)) < len(seeds):
        raise source("seeds").error("seeds: each seed once (a repeated seed repeats its images)", "seeds")
    return seeds


def _guidances(where: _Located, guidance: Any) -> list[float | None]:
    """``guidance:`` one scale or an axis of them (5,7.5 / 3-9 (+1.5)); None: the model's default."""
    if guidance is None:
        return [None]
    if _is_number(guidance):
        values = [float(guidance)]
    else:
        try:
            values = parse_axis(guidance, "guidance")
        except ValueError as err:
            raise where.error(str(err), "guidance") from None
    for scale in values:
        if not 0 <= scale <= 100:
            raise where.error(f"guidance must be a number from 0 to 100, got {scale:g}", "guidance")
    if len(set(values)) < len(values):
        raise where.error("guidance: each scale once", "guidance")
    return values


def _reference(plan: _Located, value: Any) -> ReferenceSpec | None:
    """'none', 'exact', 'NAME' or 'NAME:STEPS', or a {scheduler, steps, label, options} mapping."""
    plan = _Located(plan.path, plan.data, plan.lines, prefix="reference: ")
    if value is None or value == "none" or value is False:
        return None
    if value == "exact":
        return ReferenceSpec("exact")
    if isinstance(value, str):
        name, _, count = value.rpartition(":") if re.search(r":\s*-?\d+\s*$", value) else (value, "", "")
        value = {"scheduler": name.strip(), "steps": int(count) if count else DEFAULT_REFERENCE_STEPS}
    if not isinstance(value, Mapping):
        message = (f"reference must be 'auto', 'exact', 'none', NAME[:STEPS] (e.g. dpm:200) or a mapping, "
                   f"got {value!r}")
        raise plan.error(message, "reference")
    _check_keys(plan, value, REFERENCE_KEYS, "reference", "reference")
    steps = value.get("steps", DEFAULT_REFERENCE_STEPS)
    label = value.get("label") or value.get("scheduler")
    run = _make_run(plan, value.get("scheduler"), steps, label, value.get("options"), "reference",
                    schedule=value.get("schedule"))
    return ReferenceSpec("run", run)


def _runs(plan: _Located, raw: dict[str, Any], given: Mapping[str, Any]) -> tuple[list[RunSpec], str]:
    """Runs from --schedulers x --schedules x --steps (a matrix) or from the plan's ``runs:`` list (each run
    without a schedule of its own taking every one of ``schedules:``)."""
    where_steps = plan if "steps" not in given else _Located(None, raw, {})
    steps_list = None
    if raw.get("steps") is not None:
        try:
            steps_list = parse_int_list(raw["steps"], "steps")
        except ValueError as err:
            raise where_steps.error(str(err), "steps") from None
        for steps in steps_list:
            if steps < 1:
                raise where_steps.error(f"steps must be at least 1, got {steps}", "steps")
    schedules: list[str | None] = [None]
    if raw.get("schedules") is not None:
        where_schedules = plan if "schedules" not in given else _Located(None, raw, {})
        try:
            schedules = parse_name_list(raw["schedules"], "schedules", "schedule")
        except ValueError as err:
            raise where_schedules.error(str(err), "schedules") from None

    combos = _option_combinations(plan if "option_axes" not in given else _Located(None, raw, {}), raw)
    listed = raw.get("runs") if "schedulers" not in given else None
    if listed is not None:
        if not isinstance(listed, list) or not listed:
            raise plan.error("runs must be a non-empty list of {scheduler, steps, label, options}", "runs")
        runs = []
        for index, entry in enumerate(listed):
            if isinstance(entry, str):
                entry = {"scheduler": entry}
            if not isinstance(entry, dict):
                raise plan.error(f"each run must be a mapping with a scheduler, got {entry!r}", "runs", index)
            _check_keys(plan, entry, RUN_KEYS, "run", "runs", index)
            custom = entry.get("sigmas") is not None or entry.get("timesteps") is not None
            counts = [entry["steps"]] if "steps" in entry and "steps" not in given else steps_list
            if custom:
                counts = [None]
            if counts is None:
                raise plan.error("this run has no steps: give steps: N in the run or top-level steps:", "runs", index)
            options = entry.get("options")
            if combos != [{}] and options is not None and not isinstance(options, Mapping):
                raise plan.error(f"options must be a mapping of option: value, got {options!r}", "runs", index)
            for schedule in ([entry["schedule"]] if "schedule" in entry else schedules):
                for combo in combos:
                    for steps in counts:
                        label = entry.get("label") or entry.get("scheduler")
                        if schedule is not None and not entry.get("label"):
                            label = f"{label} {schedule}"
                        label += _combo_label(combo)
                        if len(counts) > 1:
                            label = f"{label} {steps}"
                        merged = {**(options or {}), **combo} if combo else options
                        runs.append(_make_run(plan, entry.get("scheduler"), steps, label, merged, "runs", index,
                                              schedule=schedule, sigmas=entry.get("sigmas"),
                                              timesteps=entry.get("timesteps")))
        return runs, "list"

    names_value = raw.get("schedulers")
    if names_value is None:
        raise PlanError("no schedulers: pass --schedulers a,b,c or list runs: / schedulers: in the plan file")
    where = plan if "schedulers" not in given else _Located(None, raw, {})
    try:
        names = parse_name_list(names_value)
    except ValueError as err:
        raise where.error(str(err), "schedulers") from None
    runs = [
        _make_run(where, name, steps, _row_label(name, schedule, combo), combo or None, "schedulers",
                  schedule=schedule)
        for name in names
        for schedule in schedules
        for combo in combos
        for steps in (steps_list or [20])
    ]
    return runs, "matrix"


def _row_label(name: str, schedule: str | None, combo: Mapping[str, Any]) -> str | None:
    """A matrix row's label: the sampler, its schedule and its option values (None: _make_run's default)."""
    if not combo:
        return None
    return (name if schedule is None else f"{name} {schedule}") + _combo_label(combo)


def _combo_label(combo: Mapping[str, Any]) -> str:
    """' eta=0.5 s_noise=1' for one combination of option-axis values."""
    return "".join(f" {key}={value:g}" if _is_number(value) else f" {key}={value}" for key, value in combo.items())


def _option_combinations(plan: _Located, raw: dict[str, Any]) -> list[dict[str, Any]]:
    """Every combination of the ``option_axes:`` values ({eta: 0-1 [3], solver_type: [midpoint, heun]}; a flag
    --axis eta=0,0.5,1): the runs are multiplied by them. [{}] without option axes."""
    axes = raw.get("option_axes")
    if axes is None:
        return [{}]
    if isinstance(axes, (list, tuple)):  # --axis NAME=VALUES, repeated
        parsed = {}
        for item in axes:
            name, equals, values = str(item).partition("=")
            if not equals or not name.strip():
                raise plan.error(f"--axis takes NAME=VALUES (e.g. eta=0,0.5,1), got {item!r}", "option_axes")
            parsed[name.strip()] = values
        axes = parsed
    if not isinstance(axes, Mapping) or not axes:
        raise plan.error(f"option_axes must map option names to values, got {axes!r}", "option_axes")
    values_of = {}
    for name, value in axes.items():
        if isinstance(value, str):
            try:
                values_of[name] = parse_axis(value, f"option_axes {name}")
            except ValueError:  # not numbers: a list of words (solver_type: midpoint,heun)
                values_of[name] = [v.strip() for v in value.split(",") if v.strip()]
        else:
            values_of[name] = list(value) if isinstance(value, list) else [value]
        if not values_of[name]:
            raise plan.error(f"option_axes {name}: give at least one value", "option_axes", name)
    return [dict(zip(values_of, combo, strict=True)) for combo in itertools.product(*values_of.values())]
