"""Runs the real `schedcmp` entry point in a fresh child process per command, forked from one parent that has
imported schedcmp (and torch) once: each command gets its own process, file descriptors and exit code, without
paying torch's import every time. Protocol: one JSON request per line on stdin ({"args", "cwd"}), one JSON answer
per line on stdout ({"code", "stdout", "stderr"})."""

from __future__ import annotations

import json
import os
import sys
import tempfile

import schedcmp.cli
import schedcmp.compare  # imports torch and the engine before forking


def run_child(args: list[str], cwd: str, out_path: str, err_path: str) -> None:
    """In the child: point fds 1 and 2 at files, run the entry point as `schedcmp ARGS`, exit with its code."""
    os.chdir(cwd)
    for fd, path in ((1, out_path), (2, err_path)):
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(handle, fd)
        os.close(handle)
    sys.argv = ["schedcmp", *args]
    code = 0
    try:
        schedcmp.cli.entry_point()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def main() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        with tempfile.TemporaryDirectory() as scratch:
            out_path, err_path = os.path.join(scratch, "out"), os.path.join(scratch, "err")
            pid = os.fork()
            if pid == 0:
                run_child(request["args"], request["cwd"], out_path, err_path)
            _, status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(status)
            with open(out_path, encoding="utf-8", errors="replace") as out, \
                    open(err_path, encoding="utf-8", errors="replace") as err:
                answer = {"code": code, "stdout": out.read(), "stderr": err.read()}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
