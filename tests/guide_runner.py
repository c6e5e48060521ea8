"""Run the PyTorch code of the diffusers "Schedulers" guide twice, statement by statement: once as written (diffusers)
and once with ``from diffusers import`` swapped for ``from schedcmp.core import``; write what each statement gave.

Usage: ``python guide_runner.py GUIDE.md REPORT.json``, with a hub cache that holds the guide's model (offline). The
only other edits are the machine's: ``"cuda"`` becomes ``"cpu"`` and the hub login is a no-op (no token here).
"""

from __future__ import annotations

import ast
import json
import re
import sys
import traceback
from pathlib import Path
from typing import Any

import numpy as np

CODE_BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)
FLAX_SECTION = "## Flax"  # the guide's JAX part starts here: not PyTorch


def pytorch_blocks(guide: str) -> list[str]:
    """The ```python blocks before the guide's Flax section."""
    return CODE_BLOCK.findall(guide.split(FLAX_SECTION)[0])


def for_this_machine(source: str) -> str:
    return source.replace('"cuda"', '"cpu"')


def as_schedcmp(source: str) -> str:
    return source.replace("from diffusers import", "from schedcmp.core import")


def config_items(config: Any) -> dict[str, Any]:
    """A config as a plain mapping; diffusers' ``_use_default_values`` is a list in set order, so sorted."""
    items = {key: value for key, value in dict(config).items()}
    if "_use_default_values" in items:
        items["_use_default_values"] = sorted(items["_use_default_values"])
    return json.loads(json.dumps(items, default=list))


def compare(ours: Any, theirs: Any) -> dict[str, Any]:
    """How the value a statement shows on schedcmp.core compares with diffusers' (what a reader of the guide sees)."""
    from PIL import Image

    if isinstance(theirs, Image.Image):
        a, b = (np.asarray(image, dtype=np.int16) for image in (ours, theirs))
        return {"kind": "image", "same_size": a.shape == b.shape,
                "max_level_difference": int(np.abs(a - b).max()) if a.shape == b.shape else None}
    if isinstance(theirs, list) and all(isinstance(c, type) for c in theirs):
        return {"kind": "classes", "ours": sorted(c.__name__ for c in ours),
                "theirs": sorted(c.__name__ for c in theirs)}
    if type(theirs).__name__ == "FrozenDict":
        return {"kind": "config", "ours": config_items(ours), "theirs": config_items(theirs),
                "ours_repr_head": repr(ours)[:13], "theirs_repr_head": repr(theirs)[:13]}
    if hasattr(theirs, "config") and hasattr(theirs, "compatibles"):  # a scheduler: printed as its JSON config
        return {"kind": "scheduler", "ours": [type(ours).__name__, config_items(ours.config)],
                "theirs": [type(theirs).__name__, config_items(theirs.config)],
                "ours_repr": repr(ours), "theirs_repr": repr(theirs)}
    return {"kind": "repr", "ours": repr(ours), "theirs": repr(theirs)}


def run(source: str, namespace: dict[str, Any], is_value: bool) -> tuple[Any, str | None]:
    try:
        if is_value:
            return eval(compile(source, "<guide>", "eval"), namespace), None
        exec(compile(source, "<guide>", "exec"), namespace)
        return None, None
    except Exception:
        return None, traceback.format_exc(limit=-3)


def main(guide_file: str, report_file: str) -> None:
    import huggingface_hub

    huggingface_hub.login = lambda *args, **kwargs: None  # the guide logs in to download; the cache has the model
    ours: dict[str, Any] = {}
    theirs: dict[str, Any] = {}
    report = []
    for block_number, block in enumerate(pytorch_blocks(Path(guide_file).read_text(encoding="utf-8")), start=1):
        for statement in ast.parse(block).body:
            source = for_this_machine(ast.get_source_segment(block, statement))
            is_value = isinstance(statement, ast.Expr)
            their_value, their_error = run(source, theirs, is_value)
            our_value, our_error = run(as_schedcmp(source), ours, is_value)
            entry = {"block": block_number, "source": source, "ours_error": our_error, "theirs_error": their_error}
            if is_value and our_error is None and their_error is None:
                entry["comparison"] = compare(our_value, their_value)
            report.append(entry)
    Path(report_file).write_text(json.dumps(report, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main(*sys.argv[1:])
