"""`list-compatible` and `show-config`: the scheduler names a model accepts, and the config a swap yields."""

from __future__ import annotations

import json
import sys
import warnings

from . import terminal
from .core.errors import ConfigError
from .core.load import load_scheduler_config
from .core.schedulers import (
    A1111_SAMPLERS,
    ALIASES,
    COMFY_SAMPLERS,
    DIFFUSERS_A1111_PRESETS,
    SchedulerPreset,
    resolve_scheduler,
)
from .core.schedulers.registry import TOOL_TITLES
from .core.schedulers.schedule_types import SCHEDULE_BY_ID, SCHEDULE_TYPES
from .core.schedulers.sigma_space import narrowed_grid_note

STEPS = 20  # the step count the listing describes


def _shown_name(preset: SchedulerPreset) -> str:
    """The name to type for a preset: prefixed where the bare spelling means another tool's sampler."""
    if preset.tool == "diffusers" and preset in DIFFUSERS_A1111_PRESETS:
        return f"diffusers:{preset.name}"
    if preset.tool in ("a1111", "comfy") and resolve_scheduler(preset.name) is not preset:
        return f"{preset.tool}:{preset.name}"
    return preset.name


def _default_schedule(preset: SchedulerPreset) -> str:
    if preset.ignores_schedule:
        return "its own"
    if preset.schedule is None:
        return "config"
    schedule = SCHEDULE_BY_ID[preset.schedule]
    return (schedule.comfy if preset.tool == "comfy" else schedule.a1111) or schedule.id


def _preset_row(preset: SchedulerPreset, config: dict) -> tuple[list[str], str | None]:
    """The table row of a preset on the model's config, and what to warn about it (None: nothing): a grid
    narrowed by the spacing, or why the config cannot build it."""
    name, tool, schedule = _shown_name(preset), TOOL_TITLES[preset.tool], _default_schedule(preset)
    try:
        scheduler = preset.build(config)
        scheduler.set_timesteps(STEPS)
    except ConfigError as err:
        return [name, tool, preset.cls.__name__, "-", "-", schedule], f"refused by this model's config: {err}"
    if scheduler.dynamic_timesteps:
        calls = "varies"
    else:
        calls = f"{len(scheduler.timesteps) / STEPS:g}"
    stochastic = "yes" if scheduler.is_stochastic else "no"
    if scheduler.brownian and scheduler.is_stochastic:
        stochastic = "yes (Brownian)"
    return [name, tool, preset.cls.__name__, calls, stochastic, schedule], narrowed_grid_note(scheduler)


def list_compatible(model: str) -> None:
    """Print every sampler name --schedulers accepts for ``model`` (with its tool, model calls per step at 20
    steps and whether it draws noise), then every schedule type --schedules accepts."""
    from rich.markup import escape
    from rich.table import Table

    presets = (*ALIASES, *DIFFUSERS_A1111_PRESETS, *A1111_SAMPLERS, *COMFY_SAMPLERS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = load_scheduler_config(model)
        rows, notes = zip(*(_preset_row(p, config) for p in presets), strict=True)
    table = Table(title=escape(f"Samplers for {model} (model calls per step at {STEPS} steps)"),
                  title_justify="left")
    for name in ("name", "tool", "class", "calls/step", "stochastic", "default schedule"):
        table.add_column(name, justify="right" if name == "calls/step" else "left")
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    terminal.show(table)
    schedules = Table(title="Schedule types (--schedules; case and separators ignored)", title_justify="left")
    for name in ("A1111", "ComfyUI", "id", "parameters", "what it is"):
        schedules.add_column(name)
    for schedule in SCHEDULE_TYPES:
        schedules.add_row(schedule.a1111 or "-", schedule.comfy or "-", schedule.id,
                          ", ".join(schedule.parameters) or "-", escape(schedule.description))
    terminal.show(schedules)
    names_by_note: dict[str, list[str]] = {}
    for row, note in zip(rows, notes, strict=True):
        if note is not None:
            names_by_note.setdefault(note, []).append(row[0])
    for note, names in names_by_note.items():
        terminal.warning(f"{', '.join(names)} at {STEPS} steps on this model: {note}")


def show_config(model: str, as_name: str | None) -> None:
    """Print the model's scheduler config as JSON on stdout; with ``as_name``, the swapped config and, on stderr,
    the keys that changed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = load_scheduler_config(model)
        source = resolve_scheduler(config.get("_class_name", "PNDMScheduler")).cls.from_config(config)
        shown = resolve_scheduler(as_name).build(source.config) if as_name else source
        shown.set_timesteps(STEPS)
        note = narrowed_grid_note(shown)
    sys.stdout.write(shown.to_json_string())
    if as_name:
        before, after = json.loads(source.to_json_string()), json.loads(shown.to_json_string())
        changed = sorted(k for k in set(before) | set(after) if before.get(k, "—") != after.get(k, "—"))
        err = terminal.err()
        err.print(f"{type(source).__name__} -> {type(shown).__name__}: {len(changed)} keys differ", highlight=False,
                  markup=False)
        for key in changed:
            err.print(f"  {key}: {before.get(key, '—')!r} -> {after.get(key, '—')!r}", highlight=False, markup=False)
    if note is not None:
        terminal.warning(f"{as_name or type(shown).__name__} at {STEPS} steps: {note}")
