"""A run folder that appears whole or not at all.

Everything is written into a hidden staging folder beside the target; only when the run has
finished is it renamed into place. On any error (or Ctrl-C, SIGTERM from a scheduler or SIGHUP
from a closed terminal, see :mod:`sasg.lifecycle.signals`) the staging folder is removed, so
neither a partial run folder nor a clobbered earlier one is ever left behind.

``--overwrite`` replaces only an earlier *run folder*, never an arbitrary folder (what counts as
one, and which destinations are refused before a run starts: :mod:`sasg.lifecycle.destination`).

Two runs with the same ``--out`` at once: a lock file beside the target (``.<name>.lock``, held
with ``flock`` from the start of staging until the folder is in place) makes the second one stop
before it trains, naming the first one's process, instead of the two replacing each other's
results while both report success. A staging folder records its owner (pid, host) in
``.sasg-owner``: one whose owner is gone (a run killed with SIGKILL, a power cut) is reported by
the next run for the same target, and removed with ``--overwrite``; nothing else is touched.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

from ..config import ConfigError
from ..safe_files import is_regular_file, os_reason
from .destination import (RUN_FOLDER_MARK, check_destination, check_folder, is_run_folder, mark_run_folder,
                          named_by_default)
from .lock import OWNER_FILE, RunLock, busy_message, busy_owner, lock_path, process_alive, read_owner, write_owner
from .signals import signals_held, stop_if_signalled, stop_requested

_STAGE_KINDS = ("partial", "old")  # .<name>.partial-XXXXXXXX: the new run; .old-: the one it replaces
_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class staged_run_dir:
    """``with staged_run_dir(out, overwrite) as stage:`` write into ``stage``; on success it
    becomes ``out``. ``.path`` is where the folder ended up: ``out``, or ``out-2``, ... if another
    run filled ``out`` while this one ran (without ``--overwrite`` nothing is replaced, and this
    run's results are kept all the same).

    While staged, the target's lock is held. If another run holds it, ``if_busy="refuse"`` (for a
    run about to train) raises ``ConfigError`` naming that run; ``"beside"`` (for a run whose
    results are already in hand) writes to the first free ``out-2``, ... instead, as does a name
    from :func:`~sasg.lifecycle.destination.default_run_dir`."""

    def __init__(self, out: Path, overwrite: bool = False, if_busy: str = "refuse"):
        if if_busy not in ("refuse", "beside"):
            raise ValueError(f"if_busy must be 'refuse' or 'beside', got {if_busy!r}")
        self.out = Path(out)
        self.overwrite = overwrite
        self.if_busy = if_busy
        self.path = self.out
        self.stage: Path | None = None
        self._target = self.out  # the name whose lock is held: out, or out-2, ... when out is busy
        self._lock: RunLock | None = None
        self._created: list[Path] = []

    def __enter__(self) -> Path:
        out = self.out
        beside = self.if_busy == "beside" or named_by_default(out)
        if not beside:
            check_destination(out, self.overwrite)  # before anything is created
        started = time.time()
        try:
            self._make_parents()
            self._target = self._take_lock(beside)
            self._tidy_stale(started)
            # Private (0700) while it is written, so no one can plant a name in it meanwhile; it gets
            # the usual permissions just before it is moved into place.
            self.stage = Path(tempfile.mkdtemp(prefix=f".{self._target.name}.partial-", dir=lock_path(self._target).parent))
            write_owner(self.stage)
            mark_run_folder(self.stage)
        except BaseException as e:
            self._clean_up()
            if isinstance(e, OSError):
                raise ConfigError(_write_error_message(out, e, self.stage)) from None
            raise
        return self.stage

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None and stop_requested():  # a signal's exit that was dropped on the way
                self._clean_up()
                stop_if_signalled()
            if exc_type is not None:
                self._clean_up()
                if isinstance(exc, OSError) and self._is_write_error(exc):
                    raise ConfigError(_write_error_message(self.out, exc, self.stage)) from None
                return
            stage = self.stage
            try:
                with signals_held():
                    self.path = self._move_into_place(self.stage)
                    self.stage = None
            except BaseException as e:
                self._clean_up()
                if isinstance(e, OSError):
                    raise ConfigError(_write_error_message(self.out, e, stage)) from None
                raise
        finally:
            self._release()

    # -- pieces -----------------------------------------------------------------------------

    def _make_parents(self) -> None:
        parent = self.out.parent.resolve()
        missing = [p for p in [parent, *parent.parents] if not p.exists()]
        for p in reversed(missing):
            try:
                p.mkdir()
            except FileExistsError:  # another run made it just now
                if not p.is_dir():
                    raise
                continue
            self._created.append(p)

    def _take_lock(self, beside: bool) -> Path:
        """Lock the target and check it again, now that no other run can change it. When it is
        busy (or, for a run that may go beside, cannot take the folder), the first free
        ``out-2``, ... instead; returns the name locked."""
        out = self.out
        candidate, n = out, 1
        while True:
            lock = RunLock.acquire(candidate)
            if isinstance(lock, RunLock):
                try:
                    if candidate == out:
                        check_folder(out, self.overwrite)
                    elif _has_files(candidate):  # out-2 of an earlier run: never replaced
                        raise ConfigError(f"{candidate} is taken")
                except ConfigError:
                    lock.release()
                    if not beside:
                        raise
                except BaseException:
                    lock.release()
                    raise
                else:
                    self._lock = lock
                    return candidate
            elif not beside:
                raise ConfigError(busy_message(out, lock))
            n += 1
            if n > 1000:
                raise ConfigError(f"--out {out} and {out}-2 ... -1000 are all in use; choose another --out")
            candidate = out.with_name(f"{out.name}-{n}")

    def _tidy_stale(self, started: float) -> None:
        """Report (and with ``--overwrite`` remove) staging folders of this target left by runs
        that are gone. Called with the target's lock held, so no live run is staging it."""
        stale = stale_stages(self._target, before=started)
        if not stale:
            return
        names = ", ".join(p.name for p in stale)
        what = f"{len(stale)} staging folder{'s' if len(stale) > 1 else ''} beside {self._target} ({names})"
        if self.overwrite:
            for p in stale:
                shutil.rmtree(p, ignore_errors=True)
            print(f"sasg: note: removed {what}, left by an interrupted run", file=sys.stderr)
        else:
            print(f"sasg: note: {what} left by an interrupted run; --overwrite removes them", file=sys.stderr)

    def _is_write_error(self, e: OSError) -> bool:
        """An error writing into the staging folder (disk full, quota, the folder removed)."""
        if e.errno in _DISK_FULL:
            return True
        name = getattr(e, "filename", None)
        if self.stage is None or not name:
            return False
        try:
            return Path(os.path.abspath(os.fsdecode(name))).is_relative_to(self.stage)
        except (TypeError, ValueError):
            return False

    def _move_into_place(self, stage: Path) -> Path:
        out = self._target
        try:
            (stage / OWNER_FILE).unlink()
        except FileNotFoundError:
            pass
        stage.chmod(0o777 & ~_umask())  # mkdtemp made it private; a run folder is not
        if out == self.out and self.overwrite and out.is_dir() and is_run_folder(out):
            # Move the old run folder aside first, so it is never lost if the rename fails: on any
            # failure it is put back.
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent.resolve()))
            try:
                write_owner(old)
                os.replace(out, old / out.name)
            except BaseException:
                shutil.rmtree(old, ignore_errors=True)
                raise
            try:
                os.replace(stage, out)
            except BaseException as e:
                try:
                    os.replace(old / out.name, out)
                except OSError:  # keep it where it is, never taken for litter, and say where
                    (old / OWNER_FILE).unlink(missing_ok=True)
                    reason = e.strerror if isinstance(e, OSError) else type(e).__name__
                    raise ConfigError(
                        f"cannot write the run folder {out}: {reason}; the earlier run folder is now in "
                        f"{old / out.name}: move it back with mv {old / out.name} {out}"
                    ) from None
                shutil.rmtree(old, ignore_errors=True)
                raise
            shutil.rmtree(old, ignore_errors=True)
            return out
        # rename() takes a missing or empty target and refuses a non-empty one: what another run
        # wrote meanwhile is kept, and so is this run, under the first free name beside it.
        candidate, n = out, 1
        while True:
            if candidate == out or busy_owner(candidate) is None:
                try:
                    os.rename(stage, candidate)
                    return candidate
                except OSError as e:
                    if not candidate.exists() or n > 1000:
                        raise ConfigError(_write_error_message(self.out, e, stage)) from None
            n += 1
            candidate = out.with_name(f"{out.name}-{n}")

    def _clean_up(self) -> None:
        if self.stage is not None:
            shutil.rmtree(self.stage, ignore_errors=True)
        self._release()
        _remove_created(self._created)

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def stale_stages(out: Path, before: float | None = None) -> list[Path]:
    """Staging folders of ``out`` (``.<name>.partial-*``, ``.<name>.old-*`` beside it, each with
    an owner file) whose owner process, on this host, is gone, made before ``before``. A folder
    without an owner file, or of another host (it cannot be told whether that run is alive), or of
    a live process, is never listed."""
    out = Path(out)
    parent = out.parent
    if not parent.is_dir():
        return []
    pattern = re.compile(rf"\.{re.escape(out.name)}\.({'|'.join(_STAGE_KINDS)})-[A-Za-z0-9_]{{8}}")
    before = time.time() if before is None else before
    host = socket.gethostname()
    found = []
    for p in sorted(parent.iterdir()):
        if not pattern.fullmatch(p.name) or p.is_symlink() or not p.is_dir():
            continue
        owner = read_owner(p / OWNER_FILE)
        if owner is None or owner.get("host") != host or owner["pid"] == os.getpid():
            continue
        started = owner.get("started")
        if not isinstance(started, (int, float)) or not started < before or process_alive(owner["pid"]):
            continue
        found.append(p)
    return found


# -- helpers ------------------------------------------------------------------------------------


def _write_error_message(out: Path, e: OSError, stage: Path | None) -> str:
    """One line: what failed, where, and the fix; says so when an earlier run folder is kept."""
    reason = os_reason(e)
    name = getattr(e, "filename", None)
    where = ""
    if name and stage is not None:
        try:
            where = f" (writing {Path(os.path.abspath(os.fsdecode(name))).relative_to(stage)})"
        except (TypeError, ValueError):
            where = f" ({os.fsdecode(name)})"
    elif name:
        where = f" ({os.fsdecode(name)})"
    out = Path(out)
    if e.errno in _DISK_FULL:
        fix = f"free some space in {out.parent.resolve()} (or choose an --out on another disk) and run again"
    elif e.errno in (errno.EACCES, errno.EPERM):
        fix = "choose an --out in a folder you can write to"
    else:
        fix = "choose another --out"
    kept = "; the earlier run folder there is kept" if is_regular_file(out / RUN_FOLDER_MARK) else ""
    return f"cannot write the run folder {out}: {reason}{where}; {fix}; no run folder written{kept}"


def _has_files(folder: Path) -> bool:
    """True unless ``folder`` is missing or an empty folder (what a rename can take)."""
    if not os.path.lexists(folder):
        return False
    try:
        return folder.is_symlink() or not folder.is_dir() or any(folder.iterdir())
    except FileNotFoundError:
        return False
    except OSError:
        return True


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
    created.clear()
