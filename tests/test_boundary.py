"""The error boundary every command runs in: one line per failure, the right exit code, tracebacks on request."""

from __future__ import annotations

import pytest

from schedcmp import __version__
from schedcmp.boundary import EXIT_BUG, run_guarded
from schedcmp.errors import Interrupted, PlanError


def _raises(error: BaseException):
    def body(_signals) -> None:
        raise error
    return body


def test_a_user_error_is_its_message_and_exit_code_1(capsys: pytest.CaptureFixture) -> None:
    assert run_guarded(_raises(PlanError("steps must be at least 1, got 0"))) == 1
    assert capsys.readouterr().err == "error: steps must be at least 1, got 0\n"


def test_an_unexpected_exception_is_one_line_that_calls_itself_a_bug(capsys: pytest.CaptureFixture) -> None:
    assert run_guarded(_raises(ZeroDivisionError("division by zero\nsecond line"))) == EXIT_BUG
    err = capsys.readouterr().err
    assert err == (f"error: internal error (ZeroDivisionError: division by zero second line); this is a bug in "
                   f"schedcmp {__version__}; please report it (the command, and the traceback that the same command "
                   "prints with --debug) on the schedcmp issue tracker\n")


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_debug_prints_the_traceback_before_the_line(how: str, capsys: pytest.CaptureFixture,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    if how == "environment":
        monkeypatch.setenv("SCHEDCMP_DEBUG", "1")
    assert run_guarded(_raises(ZeroDivisionError("boom")), debug=how == "flag") == EXIT_BUG
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):") and "ZeroDivisionError: boom" in err


@pytest.mark.parametrize(("error", "code", "line"), [
    (KeyboardInterrupt(), 130, "interrupted: SIGINT before any run finished; nothing was written"),
    (Interrupted(15, "SIGTERM"), 143, "interrupted: SIGTERM before any run finished; nothing was written"),
    (Interrupted(1, "SIGHUP"), 129, "interrupted: SIGHUP before any run finished; nothing was written"),
])
def test_an_interrupt_before_sampling_is_one_line(error, code: int, line: str, capsys) -> None:
    assert run_guarded(_raises(error)) == code
    assert capsys.readouterr().err == line + "\n"


def test_a_returned_code_is_passed_on() -> None:
    assert run_guarded(lambda _signals: 3) == 3
    assert run_guarded(lambda _signals: None) == 0
