"""Which folder a run may write to, and which folder is a run folder.

A run's results go to ``--out`` (or ``runs/<command>-<time>``, :func:`default_run_dir`). Before
anything runs, :func:`check_destination` refuses a destination the finished run could not take
(a file, the current folder, a mount point, a folder of other files) or one another run is
writing right now (its lock, :mod:`sasg.lifecycle.lock`).

``--overwrite`` replaces only an earlier *run folder*, never an arbitrary folder: a typo such as
``--out src --overwrite`` must not delete source code, nor someone's folder that merely holds a
file called ``summary.json``. A run folder is one sasg marked when it made it
(:func:`mark_run_folder`, :func:`is_run_folder`).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from ..config import ConfigError
from ..safe_files import open_regular, read_small, write_new
from .lock import busy_message, busy_owner, holds

RUN_FOLDER_MARK = "summary.json"  # every run folder has one
# Written into every run folder as it is made; --overwrite replaces only a folder holding it (a
# regular file, not a symlink, with exactly this text), or an older run folder told apart safely.
RUN_MARKER = ".sasg-run"
RUN_MARKER_TEXT = b"sasg run folder: --overwrite may replace this folder\n"
# What a run folder made before the marker existed holds, and nothing else (see _older_run_folder).
_RUN_FILES = re.compile(r"(config|summary|distributed)\.json|(metrics|rounds)\.csv|report\.md|[a-z0-9_]+\.png")

_default_names: set[str] = set()  # targets named by default_run_dir: on a clash the run goes beside


def default_run_dir(command: str, root: Path = Path("runs")) -> Path:
    """``runs/<command>-<time>``; ``-2``, ``-3``, ... when that name is taken (two runs started
    in the same second; a run still staging it counts as taking it)."""
    base = root / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}"
    out, n = base, 1
    while out.exists() or holds(out) or busy_owner(out) is not None:
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    _default_names.add(os.path.abspath(out))
    return out


def named_by_default(out: Path) -> bool:
    """``out`` was named by :func:`default_run_dir` in this process (so, when it is busy, the run
    goes beside it instead of being refused)."""
    return os.path.abspath(out) in _default_names


def check_destination(out: Path, overwrite: bool) -> None:
    """Refuse, before anything runs, a destination the finished run could not take, or one that
    another run is writing right now."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder; choose another --out")
    if not named_by_default(out):  # a default name moves aside instead
        owner = busy_owner(out)
        if owner is not None:
            raise ConfigError(busy_message(out, owner))
    check_folder(out, overwrite)


def check_separate_folders(out: Path, **others) -> None:
    """Refuse, in one line, an output folder (``checkpoint_dir=``, ``tensorboard=``: the flag's
    name, dashed) that is the run folder or lies inside it: the finished run folder could not be
    moved into place (it would silently land in ``out-2``), and ``--overwrite`` would delete it."""
    target = Path(out).resolve()
    for name, folder in others.items():
        if folder is None:
            continue
        where = Path(folder).resolve()
        if where == target or target in where.parents:
            flag = "--" + name.replace("_", "-")
            how = "is" if where == target else "lies inside"
            raise ConfigError(
                f"{flag} {folder} {how} the run folder --out {out}; give them separate folders, "
                f"e.g. {flag} {Path(out).parent / (Path(out).name + '-' + name.split('_')[0])}"
            )


def check_folder(out: Path, overwrite: bool) -> None:
    """``check_destination`` less the lock."""
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
        if not is_run_folder(out):
            raise ConfigError(
                f"--out {out} holds files but is not a run folder sasg made (no {RUN_MARKER} marker); "
                "--overwrite replaces only run folders: choose another --out"
            )


def is_run_folder(folder: Path) -> bool:
    """``folder`` is a run folder sasg made, which ``--overwrite`` may replace: it holds the marker
    :data:`RUN_MARKER` (a regular file, not a symlink, holding :data:`RUN_MARKER_TEXT`), or it is
    a run folder made before the marker existed (:func:`_older_run_folder`)."""
    folder = Path(folder)
    if read_small(folder / RUN_MARKER, limit=len(RUN_MARKER_TEXT) + 1) == RUN_MARKER_TEXT:
        return True
    return _older_run_folder(folder)


def _older_run_folder(folder: Path) -> bool:
    """A run folder written before the marker existed, told apart without trusting a name: its
    ``summary.json`` is a regular file holding sasg's summary (``sasg_version``, ``records``), and
    every entry is a regular file of a name sasg writes there. One file more (a thesis, a
    symlink, a sub-folder) and it is not taken for one."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return False
    names = {e.name for e in entries}
    if RUN_FOLDER_MARK not in names or "config.json" not in names:
        return False
    for e in entries:
        if not _RUN_FILES.fullmatch(e.name) or not e.is_file(follow_symlinks=False):
            return False
    try:
        with open_regular(folder / RUN_FOLDER_MARK, follow=False) as f:
            summary = json.loads(f.read(64 << 20).decode())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(summary, dict) and "sasg_version" in summary and isinstance(summary.get("records"), list)


def mark_run_folder(folder: Path) -> None:
    """Write the marker that makes ``folder`` a run folder (into a new folder of this run)."""
    write_new(Path(folder) / RUN_MARKER, RUN_MARKER_TEXT)
