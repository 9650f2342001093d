"""A run folder that appears whole or not at all.

Everything is written into a hidden staging folder beside the target; only when the run has
finished is it renamed into place. On any error (or Ctrl-C, or SIGTERM from a scheduler, see
:func:`exit_on_sigterm`) the staging folder is removed, so neither a partial run folder nor a
clobbered earlier one is ever left behind.

``--overwrite`` replaces only an earlier *run folder* (one holding ``summary.json``), never an
arbitrary folder: a typo such as ``--out src --overwrite`` must not delete source code.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

from ..config import ConfigError

RUN_FOLDER_MARK = "summary.json"  # every run folder has one; --overwrite replaces only those


def default_run_dir(command: str, root: Path = Path("runs")) -> Path:
    """``runs/<command>-<time>``; ``-2``, ``-3``, ... when that name is taken (two runs started
    in the same second)."""
    base = root / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}"
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


def check_destination(out: Path, overwrite: bool) -> None:
    """Refuse, before anything runs, a destination the finished run could not take."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder; choose another --out")
    if not out.is_dir():
        return
    # The finished folder replaces the target by a rename, which the current folder and a mount
    # point cannot undergo (EBUSY): found out only after training, so refuse them now.
    here = Path.cwd().resolve()
    target = out.resolve()
    if target == here or target in here.parents:
        raise ConfigError(f"--out {out} is (or holds) the current folder; choose a folder inside it, e.g. --out run1")
    if os.path.ismount(target):
        raise ConfigError(f"--out {out} is a mount point; choose a folder inside it, e.g. --out {out / 'run1'}")
    if any(out.iterdir()):
        if not overwrite:
            raise ConfigError(f"--out {out} already holds files; choose another --out or pass --overwrite")
        if not (out / RUN_FOLDER_MARK).is_file():
            raise ConfigError(
                f"--out {out} holds files but no {RUN_FOLDER_MARK}, so it is not a run folder; "
                "--overwrite replaces only run folders: choose another --out"
            )


class staged_run_dir:
    """``with staged_run_dir(out, overwrite) as stage:`` write into ``stage``; on success it
    becomes ``out``. ``.path`` is where the folder ended up: ``out``, or ``out-2``, ... if another
    run filled ``out`` while this one ran (without ``--overwrite`` nothing is replaced, and this
    run's results are kept all the same)."""

    def __init__(self, out: Path, overwrite: bool = False):
        self.out = Path(out)
        self.overwrite = overwrite
        self.path = self.out
        self.stage: Path | None = None
        self._created: list[Path] = []

    def __enter__(self) -> Path:
        out = self.out
        check_destination(out, self.overwrite)
        parent = out.parent.resolve()
        try:
            missing = [p for p in [parent, *parent.parents] if not p.exists()]
            for p in reversed(missing):
                p.mkdir()
                self._created.append(p)
            self.stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=parent))
            self.stage.chmod(0o777 & ~_umask())  # mkdtemp makes it private; a run folder is not
        except OSError as e:
            _remove_created(self._created)
            raise ConfigError(f"cannot write the run folder {out}: {e.strerror or e}; choose another --out") from None
        return self.stage

    def __exit__(self, exc_type, exc, tb) -> None:
        stage = self.stage
        if exc_type is not None:
            shutil.rmtree(stage, ignore_errors=True)
            _remove_created(self._created)
            return
        try:
            self.path = self._move_into_place(stage)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            _remove_created(self._created)
            raise

    def _move_into_place(self, stage: Path) -> Path:
        out = self.out
        if self.overwrite and out.is_dir() and (out / RUN_FOLDER_MARK).is_file():
            # Move the old run folder aside first, so it is never lost if the rename fails.
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent.resolve()))
            os.replace(out, old / out.name)
            os.replace(stage, out)
            shutil.rmtree(old, ignore_errors=True)
            return out
        # rename() takes a missing or empty target and refuses a non-empty one: what another run
        # wrote meanwhile is kept, and so is this run, under the first free name beside it.
        candidate, n = out, 1
        while True:
            try:
                os.rename(stage, candidate)
                return candidate
            except OSError as e:
                if not candidate.exists() or n > 1000:
                    raise ConfigError(f"cannot write the run folder {out}: {e.strerror or e}; choose another --out") from None
            n += 1
            candidate = out.with_name(f"{out.name}-{n}")


def exit_on_sigterm() -> None:
    """Turn SIGTERM (a scheduler's kill, torchrun stopping its workers) into ``SystemExit``, so
    that a staging folder is cleaned up as on Ctrl-C instead of being left behind."""

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove_created(created: list[Path]) -> None:
    for p in reversed(created):
        try:
            p.rmdir()
        except OSError:
            pass
