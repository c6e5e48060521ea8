"""User-facing errors of the tool: the error boundary prints each as one line and exits with its ``exit_code``."""

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


class OutputFolderError(SchedcmpError):
    """The output folder cannot be used: it is a file, lies below one, or cannot be written."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, or a SIGTERM / SIGHUP turned into the same clean stop; the exit code is 128 + the signal number."""

    def __init__(self, signal_number: int, name: str):
        super().__init__(name)
        self.signal_number, self.name = signal_number, name

    @property
    def exit_code(self) -> int:
        return 128 + self.signal_number


class RunFailedError(SchedcmpError):
    """One or more runs of a plan failed; what finished was still written."""


__all__ = ["ConfigError", "Interrupted", "OutputExistsError", "OutputFolderError", "PlanError", "RunFailedError",
           "SchedcmpError", "UnknownSchedulerError"]
