"""The output folder, changed only when a comparison has its results: everything is written into a staging
folder beside the target and moved in at the end, so a failed start or a crash leaves the target as it was and
--overwrite replaces old results only once the new ones exist. Symlinks are removed, never followed."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..errors import OutputExistsError, OutputFolderError

# Everything a comparison writes into its folder; only these are ever replaced or removed there.
RESULT_NAMES = ("grid.png", "timings.csv", "results.json", "images", "reference.png", "error_vs_calls.png",
                "report.html", "sweep.json", "statistics.csv", "pages", "overview.png")
PAGE_GRIDS = "grid-*.png"  # a sweep's grid per page
STAGING_PREFIX = ".schedcmp-incomplete-"  # + the target's name + a random tail: a run still writing (or killed)


def _exists(path: Path) -> bool:
    """Whether anything (a broken symlink too) is at ``path``."""
    return path.is_symlink() or path.exists()


def write_atomically(path: Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(temporary_path)`` and move the file into place, so ``path`` is whole or absent."""
    temporary = path.with_name(f".{path.name}.partial")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def remove(path: Path) -> None:
    """Delete a file, a symlink (the link, not what it points to) or a folder tree without following links."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path)  # rmtree unlinks symlinks inside the tree rather than descending into them


def _result_names(folder: Path) -> list[str]:
    """The results a folder may hold: the fixed names and a sweep's page grids found there."""
    grids = sorted(p.name for p in folder.glob(PAGE_GRIDS)) if folder.is_dir() else []
    return [*RESULT_NAMES, *grids]


class OutputFolder:
    """Where a comparison's results go; checked before anything runs, written only through a staging folder."""

    def __init__(self, target: Path, overwrite: bool):
        self.target = Path(target)
        self.overwrite = overwrite
        self.staging: Path | None = None

    def check(self) -> None:
        """Refuse a target that is a file, lies below a file, holds results (without --overwrite) or cannot be
        written; nothing is created or changed."""
        target = self.target
        for parent in [target, *target.parents]:
            if _exists(parent) and not parent.is_dir():
                where = "is a file" if parent == target else f"lies below {parent}, which is a file"
                raise OutputFolderError(f"--out {target} {where}; choose a folder")
        existing = [name for name in _result_names(target) if _exists(target / name)]
        if existing and not self.overwrite:
            raise OutputExistsError(
                f"{target} already holds results ({', '.join(existing)}); pass --overwrite to replace them or "
                "choose another --out"
            )
        nearest = next(p for p in [target, *target.parents] if p.is_dir())
        if not os.access(nearest, os.W_OK | os.X_OK):
            raise OutputFolderError(f"--out {target}: cannot write in {nearest} (permission denied)")

    def open_staging(self) -> Path:
        """Create the staging folder beside the target (with the target's parents) and return it."""
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{self.target.name}-", dir=self.target.parent))
        (self.staging / "images").mkdir()
        return self.staging

    def commit(self) -> None:
        """Move the staged results into the target; old results there go only after the new ones are in place.
        Files of the user's own in the target are left alone."""
        staging = self._staged()
        self.target.mkdir(parents=True, exist_ok=True)
        replaced = staging / ".replaced"  # the old results, removed with the staging folder once the new are in
        replaced.mkdir()
        for name in dict.fromkeys([*_result_names(self.target), *_result_names(staging)]):
            if _exists(self.target / name):
                os.replace(self.target / name, replaced / name)
            if _exists(staging / name):
                os.replace(staging / name, self.target / name)
        remove(staging)
        self.staging = None

    def discard(self) -> None:
        """Remove the staging folder and everything in it (the target is untouched)."""
        if self.staging is not None:
            remove(self.staging)
            self.staging = None

    def _staged(self) -> Path:
        if self.staging is None:
            raise RuntimeError("no staging folder: call open_staging() first")
        return self.staging
