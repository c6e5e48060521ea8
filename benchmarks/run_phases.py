"""Where one `schedcmp run` spends its time: imports, plan and model, sampling (with the reference and accuracy,
each image written as its run ends), and the grid / plot / CSV / record / report.

Usage: .venv/bin/python benchmarks/run_phases.py [PLAN.yaml] (default configs/seed-doc.yaml on builtin:shapes).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

start = time.perf_counter()
from schedcmp.core.load import load_pipeline  # noqa: E402
from schedcmp.engine import Engine  # noqa: E402
from schedcmp.outputs.summary import Summary  # noqa: E402
from schedcmp.outputs.writer import ResultWriter  # noqa: E402
from schedcmp.plan import build_plan  # noqa: E402

imported = time.perf_counter()


def main() -> None:
    plan_file = Path(sys.argv[1] if len(sys.argv) > 1 else "configs/seed-doc.yaml")
    plan = build_plan(plan_file, {"model": "builtin:shapes", "prompt": "a red circle on a blue background"})
    pipeline = load_pipeline(plan.model)
    engine = Engine(pipeline, plan)
    loaded = time.perf_counter()
    folder = Path(tempfile.mkdtemp())
    (folder / "images").mkdir()
    size = plan.size or pipeline.default_size
    writer = ResultWriter(folder, plan, size)
    report = engine.run(None, writer.run_finished)
    sampled = time.perf_counter()
    writer.finish(Summary.build(plan, report, pipeline.describe(), size))
    written = time.perf_counter()
    for phase, seconds in (("imports", imported - start), ("plan and model", loaded - imported),
                           ("sampling, reference, accuracy, images", sampled - loaded),
                           ("grid, plot, CSV, record, report", written - sampled)):
        print(f"{phase:<40} {seconds:6.2f} s")


if __name__ == "__main__":
    main()
