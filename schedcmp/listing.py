"""`list-compatible` and `show-config`: the scheduler names a model accepts, and the config a swap yields."""

from __future__ import annotations

import json
import sys
import warnings

from . import terminal
from .core.errors import ConfigError
from .core.load import load_scheduler_config
from .core.schedulers import A1111_PRESETS, ALIASES, SchedulerPreset, resolve_scheduler
from .core.schedulers.sigma_space import narrowed_grid_note

STEPS = 20  # the step count the listing describes


def _preset_row(preset: SchedulerPreset, config: dict) -> tuple[list[str], str | None]:
    """The table row of a preset on the model's config, and what to warn about it (None: nothing): a grid
    narrowed by the spacing, or why the config cannot build it."""
    options = ", ".join(f"{k}={v}" for k, v in preset.options.items())
    try:
        scheduler = preset.build(config)
        scheduler.set_timesteps(STEPS)
    except ConfigError as err:
        return [preset.name, preset.cls.__name__, "-", "-", options], f"refused by this model's config: {err}"
    calls = len(scheduler.timesteps) / STEPS
    row = [preset.name, preset.cls.__name__, f"{calls:g}", "yes" if scheduler.is_stochastic else "no", options]
    return row, narrowed_grid_note(scheduler)


def list_compatible(model: str) -> None:
    """Print every name --schedulers accepts for ``model``, with model calls per step at 20 steps."""
    from rich.markup import escape
    from rich.table import Table

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = load_scheduler_config(model)
        rows, notes = zip(*(_preset_row(p, config) for p in (*ALIASES, *A1111_PRESETS)), strict=True)
    table = Table(title=escape(f"Schedulers compatible with {model} (model calls per step at {STEPS} steps)"),
                  title_justify="left")
    for name in ("name", "class", "calls/step", "stochastic", "options"):
        table.add_column(name, justify="right" if name == "calls/step" else "left")
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    terminal.show(table)
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
