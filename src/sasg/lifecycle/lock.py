"""Who is writing a run folder: the lock file beside it and the owner record of a staging folder.

``.<name>.lock`` beside ``--out`` is held with ``flock`` while a run stages and moves its folder
into place, so a second run on the same ``--out`` is refused instead of the two replacing each
other's results. The kernel drops an ``flock`` when its process ends, so a held lock is always a
live run. A staging folder holds ``.sasg-owner`` (pid, host, start time): one whose process is
gone was left by a killed run (see :func:`sasg.lifecycle.rundir.stale_stages`).
"""

from __future__ import annotations

import atexit
import errno
import json
import os
import socket
import stat
import time
from pathlib import Path

from ..config import ConfigError
from ..safe_files import kind_of, read_small, write_new

try:
    import fcntl
except ImportError:  # Windows: no locking, the rest works as before
    fcntl = None

OWNER_FILE = ".sasg-owner"  # inside a staging folder: who is writing it (removed before the rename)

_held: dict[str, "RunLock"] = {}  # lock file -> the lock this process holds on it
_exit_hook = False  # whether _release_all is registered with atexit (see _hold)


# -- the lock -----------------------------------------------------------------------------------


def holds(out: Path) -> bool:
    """This process holds ``out``'s lock."""
    return str(lock_path(out)) in _held


def lock_path(out: Path) -> Path:
    """``.<name>.lock`` beside the run folder ``out``."""
    out = Path(out)
    return out.parent.resolve() / f".{out.name}.lock"


class RunLock:
    """An ``flock`` on ``.<name>.lock``, the file holding the owner's pid and host. The file is
    removed on release while still locked; one who opened it just before then finds, once locked,
    that the name no longer leads to the file it holds, and starts again with a new file."""

    def __init__(self, path: Path, fd: int | None):
        self.path = path
        self.fd = fd  # None: this file system cannot lock; the run goes on unlocked
        self.pid = os.getpid()  # a forked child inherits the descriptor, never the file to remove

    @classmethod
    def acquire(cls, out: Path) -> "RunLock | dict":
        """The lock, or (when another run holds it) that run's owner record."""
        path = lock_path(out)
        key = str(path)
        if key in _held:
            return read_owner(path) or {"pid": os.getpid(), "host": socket.gethostname()}
        if fcntl is None:
            return cls(path, None)
        for _ in range(100):
            fd = _open_lock_file(path)
            try:
                _flock(fd)
            except BlockingIOError:
                os.close(fd)
                return read_owner(path) or {}
            except OSError:  # no locks here (some network file systems): go on without one
                os.close(fd)
                return cls(path, None)
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if same:
                lock = cls(path, fd)
                _hold(key, lock)
                lock._record()
                return lock
            os.close(fd)  # its holder removed it as we opened it: take the new one
        raise OSError(errno.EAGAIN, "the lock file keeps being replaced", str(path))

    def _record(self) -> None:
        text = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}) + "\n"
        try:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, text.encode(), 0)
        except OSError:  # read-only descriptor, disk full: the lock holds all the same
            pass

    def release(self) -> None:
        _held.pop(str(self.path), None)
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            if self.pid == os.getpid() and os.path.samestat(os.fstat(fd), os.stat(self.path)):
                os.unlink(self.path)  # still locked: no one can take this file between the two
        except OSError:
            pass
        finally:
            os.close(fd)  # releases the flock


def _flock(fd: int) -> None:
    """Lock, not waiting for a run that holds the lock; a few short tries, as another process's
    probe (``busy_owner``) may hold it for an instant."""
    for wait in (0.005, 0.02, 0.05, 0.1, None):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if wait is None:
                raise
            time.sleep(wait)


def _open_lock_file(path: Path) -> int:
    """The lock file, opened (created if missing) never through a symlink, and refused unless it is
    a regular file of one name: a symlink or a hard link planted at ``.<name>.lock`` would make the
    owner record truncate and overwrite the file it leads to."""
    flags = os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, os.O_RDWR | flags, 0o666)
    except PermissionError:  # another user's lock file: a read-only descriptor locks as well
        if not os.path.lexists(path):  # no file to share: the folder itself is not writable
            raise
        fd = _open_existing(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ConfigError(_not_a_lock(path, "a symlink")) from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        what = kind_of(st) if not stat.S_ISREG(st.st_mode) else f"a file with {st.st_nlink} names (hard links)"
        raise ConfigError(_not_a_lock(path, what))
    return fd


def _open_existing(path: Path) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ConfigError(_not_a_lock(path, "a symlink")) from None
        raise


def _not_a_lock(path: Path, what: str) -> str:
    return (f"the run lock {path} is {what}, not a lock file sasg made; nothing was written: remove it "
            "(rm, never through it) or choose another --out")


def busy_owner(out: Path) -> dict | None:
    """The owner record of another run holding ``out``'s lock, or None (free, or held here)."""
    path = lock_path(out)
    if fcntl is None or str(path) in _held:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None  # no lock file (or a symlink, which acquire refuses): no run is staging it
    try:
        _flock(fd)
    except BlockingIOError:
        return read_owner(path) or {}
    except OSError:
        return None
    finally:
        os.close(fd)
    return None


def busy_message(out: Path, owner: dict) -> str:
    who = "another run"
    if owner.get("pid"):
        who += f" (pid {owner['pid']}"
        if owner.get("host") and owner["host"] != socket.gethostname():
            who += f" on {owner['host']}"
        who += ")"
    # The kernel drops an flock when its process ends, so a held lock is a live run.
    return f"--out {out} is being written by {who}; wait for it to finish, or choose another --out"


def _hold(key: str, lock: RunLock) -> None:
    """Keep ``lock`` as held by this process. The first one registers :func:`_release_all` to run
    at exit: a process that never locks (one that only imports sasg) gets no exit hook."""
    global _exit_hook
    if not _exit_hook:
        atexit.register(_release_all)
        _exit_hook = True
    _held[key] = lock


def _release_all() -> None:
    """A lock still held at exit (an error between taking it and staging) is let go tidily."""
    for lock in list(_held.values()):
        lock.release()


# -- owners of staging folders ------------------------------------------------------------------


def write_owner(folder: Path) -> None:
    text = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}) + "\n"
    write_new(folder / OWNER_FILE, text.encode())  # a fresh folder of this run: never an existing file


def read_owner(path: Path) -> dict | None:
    data = read_small(path)  # a regular file only: a FIFO planted there must not hang the run
    try:
        owner = json.loads((data or b"").decode())
        pid = owner["pid"]
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None
    if not isinstance(owner, dict) or not isinstance(pid, int) or pid <= 0:
        return None
    return owner


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True
