"""`list-compatible` and `show-config`: the scheduler names a model accepts, and the config a swap yields."""

from __future__ import annotations

import json
import sys
import warnings

from . import terminal
from .core.load import load_scheduler_config
from .core.schedulers import A1111_PRESETS, ALIASES, SchedulerPreset, resolve_scheduler


def _preset_row(preset: SchedulerPreset, config: dict, steps: int = 20) -> list[str]:
    scheduler = preset.build(config)
    scheduler.set_timesteps(steps)
    calls = len(scheduler.timesteps) / steps
    options = ", ".join(f"{k}={v}" for k, v in preset.options.items())
    return [preset.name, preset.cls.__name__, f"{calls:g}", "yes" if scheduler.is_stochastic else "no", options]


def list_compatible(model: str) -> None:
    """Print every name --schedulers accepts for ``model``, with model calls per step at 20 steps."""
    from rich.markup import escape
    from rich.table import Table

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = load_scheduler_config(model)
        rows = [_preset_row(p, config) for p in (*ALIASES, *A1111_PRESETS)]
    table = Table(title=escape(f"Schedulers compatible with {model} (model calls per step at 20 steps)"),
                  title_justify="left")
    for name in ("name", "class", "calls/step", "stochastic", "options"):
        table.add_column(name, justify="right" if name == "calls/step" else "left")
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    terminal.show(table)


def show_config(model: str, as_name: str | None) -> None:
    """Print the model's scheduler config as JSON on stdout; with ``as_name``, the swapped config and, on stderr,
    the keys that changed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = load_scheduler_config(model)
        source = resolve_scheduler(config.get("_class_name", "PNDMScheduler")).cls.from_config(config)
        shown = resolve_scheduler(as_name).build(source.config) if as_name else source
    sys.stdout.write(shown.to_json_string())
    if as_name:
        before, after = json.loads(source.to_json_string()), json.loads(shown.to_json_string())
        changed = sorted(k for k in set(before) | set(after) if before.get(k, "—") != after.get(k, "—"))
        err = terminal.err()
        err.print(f"{type(source).__name__} -> {type(shown).__name__}: {len(changed)} keys differ", highlight=False,
                  markup=False)
        for key in changed:
            err.print(f"  {key}: {before.get(key, '—')!r} -> {after.get(key, '—')!r}", highlight=False, markup=False)
