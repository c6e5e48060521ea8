"""Reading report pages in tests: a small HTML table parser, and headless Chromium as a pytest fixture."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


class Page(HTMLParser):
    """The parts of a page the tests look at: every start tag, and the header and body rows of every table by id."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.tables: dict[str, dict[str, list[list[str]]]] = {}
        self._table: list[str | None] = []
        self._section = ""
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "table":
            self._table.append(dict(attrs).get("id"))
            if self._table[-1]:
                self.tables[self._table[-1]] = {"head": [], "body": []}
        elif tag in ("thead", "tbody"):
            self._section = "head" if tag == "thead" else "body"
        elif tag == "tr" and self._table and self._table[-1]:
            self.tables[self._table[-1]][self._section].append([])
        elif tag in ("td", "th") and self._table and self._table[-1]:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._table.pop()
        elif tag in ("td", "th") and self._cell is not None:
            self.tables[self._table[-1]][self._section][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def all(self, tag: str, cls: str | None = None) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == tag and (cls is None or cls in (a.get("class") or "").split())]

    def column(self, table: str, header: str) -> list[str]:
        index = self.tables[table]["head"][0].index(header)
        return [row[index] for row in self.tables[table]["body"]]


def headless_chromium(tmp_path: Path) -> Callable[..., str]:
    """Run headless Chromium on a file with its own profile; returns a function of the extra arguments."""
    binary = next((path for path in map(shutil.which, BROWSERS) if path), None)
    if binary is None:
        pytest.skip("Chromium is not installed (apt-get install chromium); .ci/run installs it")

    # Chromium writes crash-report settings and dconf state under $HOME even with its own profile: keep all of it in
    # tmp_path, so a test run leaves nothing behind in the user's home folder.
    home = tmp_path / "home"
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
           "XDG_CACHE_HOME": str(home / ".cache"), "XDG_DATA_HOME": str(home / ".local" / "share")}

    def run(*args: str) -> str:
        command = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                   "--no-first-run", "--disable-breakpad", f"--user-data-dir={tmp_path / 'profile'}", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=True, env=env).stdout

    return run
