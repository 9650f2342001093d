"""A run folder that appears whole or not at all.

Everything is written into a hidden staging folder beside the target; only when the run has
finished is it renamed into place. On any error (or Ctrl-C) the staging folder is removed, so
neither a partial run folder nor a clobbered earlier one is ever left behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..config import ConfigError


def check_destination(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"--out {out} already holds files; choose another --out or pass --overwrite")


@contextmanager
def staged_run_dir(out: Path, overwrite: bool = False) -> Iterator[Path]:
    out = Path(out)
    check_destination(out, overwrite)
    created = []
    parent = out.parent.resolve()
    try:
        missing = [p for p in [parent, *parent.parents] if not p.exists()]
        for p in reversed(missing):
            p.mkdir()
            created.append(p)
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=parent))
        stage.chmod(0o777 & ~_umask())  # mkdtemp makes it private; a run folder is not
    except OSError as e:
        _remove_created(created)
        raise ConfigError(f"cannot write the run folder {out}: {e.strerror or e}; choose another --out") from None
    try:
        yield stage
        if out.exists():
            # Move the old folder aside first, so it is never lost if the rename fails.
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=parent))
            os.replace(out, old / out.name)
            os.replace(stage, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        _remove_created(created)
        raise


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
