"""Coverage of the tools' sampler x schedule pairs: A1111 1.10's 20 samplers x 12 Schedule types and ComfyUI's 45
samplers x 9 schedulers, each pair run through schedcmp's registry and through the tool's own pipeline
(tests/tool_pairs.py) on the same model, latents and noise, exactly as tests/test_tool_pairs.py compares them.

Prints one matrix per tool: every pair's relative error (max |ours - tool| / std of the tool's result), marked
"!" where it exceeds the pair's bound or the model calls differ, "~" where the bound is SPREADS times the tool's own
float32-vs-float64 spread (the rounding-sensitive pairs of tests/test_tool_pairs.py), "n/s" where the pair is not
supported (the reasons follow); then the totals. Run it as

    .venv/bin/python benchmarks/tool_coverage.py [--steps 10] [--diffusers-arithmetic]

The tools derive their training sigmas in their own float64 arithmetic, and so do schedcmp's A1111 and ComfyUI
names (``training_arithmetic``); ``--diffusers-arithmetic`` gives the tools diffusers' float32 sigmas instead (see
tests/tool_pairs.py), to show what that difference alone does to the pairs.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import torch  # noqa: E402
from test_tool_pairs import (  # noqa: E402
    A1111_SAMPLERS,
    A1111_SCHEDULE_TYPES,
    COMFY_SAMPLERS,
    COMFY_SCHEDULERS,
    STEPS,
    compare_pair,
    tolerance,
    tool_spread,
    unsupported,
)

A1111_HEADERS = ["Auto", "Unif", "Karras", "Exp", "Poly", "SGM", "KL", "AYS", "Simple", "Normal", "DDIM", "Beta"]
COMFY_HEADERS = ["simple", "sgm", "karras", "exp", "ddim_u", "beta", "normal", "lin_q", "kl_opt"]
CELL = 8


def matrix(tool: str, names, schedules, headers: list[str], steps: int, tool_arithmetic: bool) -> dict:
    """Print one tool's matrix; return its counts, worst error, failures and reasons."""
    width = max(len(name) for name in names) + 2
    print(" " * width + "".join(f"{h:>{CELL}}" for h in headers) + f"{'max':>{CELL + 1}}")
    summary = {"ok": 0, "failed": [], "unsupported": {}, "worst": 0.0, "total": 0}
    for name in names:
        cells, row_max = [], 0.0
        for schedule in schedules:
            summary["total"] += 1
            reason = unsupported(tool, name, schedule)
            if reason:
                summary["unsupported"].setdefault(reason, []).append((name, schedule))
                cells.append("n/s")
                continue
            result = compare_pair(tool, name, schedule, steps, tool_arithmetic)
            row_max = max(row_max, result.error)
            summary["worst"] = max(summary["worst"], result.error)
            if result.ok:
                summary["ok"] += 1
                cells.append(f"{result.error:.0e}" + ("~" if result.bound > tolerance(tool, name) else ""))
            else:
                summary["failed"].append((name, schedule, result))
                cells.append(f"!{result.error:.0e}")
        worst = f"{row_max:.0e}" if row_max else "-"
        print(f"{name:<{width}}" + "".join(f"{c:>{CELL}}" for c in cells) + f"{worst:>{CELL + 1}}")
    return summary


def report(title: str, tool: str, summary: dict, steps: int, tool_arithmetic: bool) -> None:
    """The totals of one tool, its failures with their bounds, and the unsupported pairs with the reasons."""
    supported = summary["total"] - sum(len(pairs) for pairs in summary["unsupported"].values())
    print(f"\n{title}: {summary['ok']} of {summary['total']} pairs match their tool ({supported} supported); "
          f"largest relative error {summary['worst']:.1e}")
    for name, schedule, result in summary["failed"]:
        calls = "same calls" if result.same_calls else f"calls {len(result.ours)} vs the tool's {len(result.tool)}"
        try:
            own = tool_spread(tool, name, schedule, steps, tool_arithmetic)
            spread = f"the tool's own float32 and float64 runs differ by {own:.1e}"
        except ValueError:  # A1111's own loops (DDIM, PLMS, UniPC, Restart, LCM) run in float32 only here
            spread = "its float64 run not measured"
        print(f"  ! {name} | {schedule}: {result.error:.1e} over the bound {result.bound:.0e} ({calls}; {spread})")
    for reason, pairs in summary["unsupported"].items():
        samplers = sorted({name for name, _ in pairs})
        print(f"  n/s ({len(pairs)} pairs of {', '.join(samplers)}): {reason}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--diffusers-arithmetic", dest="tool_arithmetic", action="store_false")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    training = "the tools' own float64-derived" if args.tool_arithmetic else "schedcmp's"
    print(f"{args.steps} steps, SD 1.5 ({training} training sigmas); relative error per pair, '!' over its bound\n")
    print(f"A1111 1.10: sampler x Schedule type ({', '.join(A1111_SCHEDULE_TYPES)})")
    a1111 = matrix("a1111", list(A1111_SAMPLERS), A1111_SCHEDULE_TYPES, A1111_HEADERS, args.steps,
                   args.tool_arithmetic)
    print(f"\nComfyUI: sampler x scheduler ({', '.join(COMFY_SCHEDULERS)})")
    comfy = matrix("comfy", list(COMFY_SAMPLERS), COMFY_SCHEDULERS, COMFY_HEADERS, args.steps, args.tool_arithmetic)
    print()
    report("A1111 1.10", "a1111", a1111, args.steps, args.tool_arithmetic)
    report("ComfyUI", "comfy", comfy, args.steps, args.tool_arithmetic)
    print(f"\nTotal: {a1111['ok'] + comfy['ok']} of {a1111['total'] + comfy['total']} pairs")


if __name__ == "__main__":
    main()
