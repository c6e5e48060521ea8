"""User-facing errors of the tool: the CLI prints each as one red line and exits with code 1."""

from __future__ import annotations

from pathlib import Path

from .core.errors import ConfigError, SchedcmpError, UnknownSchedulerError


class PlanError(SchedcmpError):
    """A plan (YAML file or flags) that cannot be run; names the file and line where it has them."""

    def __init__(self, message: str, path: Path | None = None, line: int | None = None):
        where = f"{path}:{line}: " if path is not None and line is not None else (f"{path}: " if path else "")
        super().__init__(f"{where}{message}")


class OutputExistsError(SchedcmpError):
    """The output folder already holds results and --overwrite was not given."""


class RunFailedError(SchedcmpError):
    """One or more runs of a plan failed; what finished was still written."""


__all__ = ["ConfigError", "OutputExistsError", "PlanError", "RunFailedError", "SchedcmpError", "UnknownSchedulerError"]
