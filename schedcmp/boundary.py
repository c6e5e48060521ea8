"""The one error boundary of every command: expected failures become one line and an exit code; Ctrl-C, SIGTERM
and SIGHUP stop the work cleanly (exit 128 + signal); anything else is reported as a bug in one line, with the
traceback only under --debug or SCHEDCMP_DEBUG=1."""

from __future__ import annotations

import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from . import __version__, terminal
from .errors import Interrupted, SchedcmpError

EXIT_ERROR = 1  # a user mistake or a failed run
EXIT_USAGE = 2  # a bad flag or argument (as Typer / click)
EXIT_BUG = 70  # an internal error (sysexits' EX_SOFTWARE)
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
BUG_REPORT = ("this is a bug in schedcmp {version}; please report it (the command, and the traceback that the same "
              "command prints with --debug) on the schedcmp issue tracker")


def debug_requested(flag: bool = False) -> bool:
    """Whether to show tracebacks: --debug, or SCHEDCMP_DEBUG set to anything but '', '0' or 'false'."""
    return flag or os.environ.get("SCHEDCMP_DEBUG", "").lower() not in ("", "0", "false", "no")


class StopSignals:
    """While active, SIGINT, SIGTERM and SIGHUP raise ``Interrupted`` (a KeyboardInterrupt) so the engine stops
    after the current model call and what finished is written; ``deferred()`` holds them off while results are
    being written, so a second Ctrl-C cannot lose them."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._deferred = False
        self._previous: dict[int, object] = {}

    def _handle(self, number: int, _frame: object) -> None:
        first = self.received is None
        self.received = self.received or number
        if first and not self._deferred:
            raise Interrupted(number, signal.Signals(number).name)

    def __enter__(self) -> StopSignals:
        for number in STOP_SIGNALS:
            try:
                self._previous[number] = signal.signal(number, self._handle)
            except ValueError:  # not the main thread: leave the process's handlers alone
                break
        return self

    def __exit__(self, *exc: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Hold stop signals off for the block (they are remembered and decide the exit code)."""
        previous, self._deferred = self._deferred, True
        try:
            yield
        finally:
            self._deferred = previous

    def exit_code(self) -> int | None:
        """128 + the first stop signal received (130 for Ctrl-C), or None."""
        return None if self.received is None else 128 + self.received


def run_guarded(body: Callable[[StopSignals], int | None], debug: bool = False) -> int:
    """Run a command's ``body`` inside the boundary and return its exit code (0 when it returns None)."""
    debug = debug_requested(debug)
    with StopSignals() as signals:
        try:
            return body(signals) or 0
        except SchedcmpError as err:
            _trace(debug)
            terminal.error(str(err))
            return getattr(err, "exit_code", EXIT_ERROR)
        except KeyboardInterrupt as err:
            _trace(debug)
            name = err.name if isinstance(err, Interrupted) else "SIGINT"
            terminal.note("interrupted", f"{name} before any run finished; nothing was written")
            return err.exit_code if isinstance(err, Interrupted) else 128 + signal.SIGINT
        except Exception as err:  # anything else is ours to fix
            _trace(debug)
            problem = terminal.one_line(str(err)) or "no message"
            terminal.error(f"internal error ({type(err).__name__}: {problem}); "
                           + BUG_REPORT.format(version=__version__))
            return EXIT_BUG


def _trace(debug: bool) -> None:
    if debug:
        traceback.print_exc(file=sys.stderr)
