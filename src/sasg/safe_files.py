"""Creating and reading files without being led elsewhere by a name someone else planted.

sasg writes beside folders the user names (a lock beside ``--out``, checkpoints in
``--checkpoint-dir``), and such folders may be shared, or reached by a process running as root.
A name there may already be a symlink (to another run's ``summary.json``, to ``/etc/...``), a
hard link to someone's file, or a FIFO that blocks whoever opens it. So:

* a file sasg creates is created here, with ``O_CREAT | O_EXCL | O_NOFOLLOW``: it is a new file
  of this process or the call fails; a temporary one gets an unpredictable name
  (:func:`create_temporary`), so no name can be planted for it in advance;
* a file sasg reads is opened without blocking and checked to be a regular file first
  (:func:`open_regular`): a FIFO or a device is refused, never waited on.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
import tempfile
from pathlib import Path

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC


class NotARegularFile(OSError):
    """A name sasg reads or owns that leads to something other than a regular file."""

    def __str__(self) -> str:
        return f"{self.filename} {self.strerror}" if self.filename else str(self.strerror)


def create_new(path: Path, mode: int = 0o666) -> int:
    """A descriptor (write-only) of a file just created at ``path``; ``FileExistsError`` if the
    name is taken, by anything, a dangling symlink included."""
    return os.open(path, CREATE_FLAGS, mode)


def create_temporary(path: Path, mode: int = 0o666) -> tuple[int, Path]:
    """A new file beside ``path`` named ``.<name>.tmp-<random>``, for writing ``path`` atomically
    (write, fsync, ``os.replace``). Returns its descriptor and its name."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(6)}")
        try:
            return create_new(tmp, mode), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(path))


def write_new(path: Path, data: bytes, mode: int = 0o666) -> None:
    """Create ``path`` (it must not exist) holding ``data``."""
    fd = create_new(path, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def kind_of(st: os.stat_result) -> str:
    """What a non-regular file is, in a word a user knows."""
    for test, word in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISLNK, "a symlink"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(st.st_mode):
            return word
    return "not a regular file"


def open_regular(path: Path, follow: bool = True):
    """``path`` opened for reading (binary), once it is known to be a regular file: opened with
    ``O_NONBLOCK`` (a FIFO then opens at once instead of waiting for a writer) and checked with
    ``fstat`` on what was opened, so no swap between a check and the open can fool it. Anything
    else is :class:`NotARegularFile` naming what it is. ``follow=False``: a symlink is refused too."""
    flags = os.O_RDONLY | _NONBLOCK | _CLOEXEC | (0 if follow else _NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if not follow and e.errno == errno.ELOOP:
            raise NotARegularFile(errno.ELOOP, "is a symlink", str(path)) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotARegularFile(errno.EINVAL, f"is {kind_of(st)}, not a regular file", str(path))
        if _NONBLOCK:
            import fcntl

            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def is_regular_file(path: Path) -> bool:
    """``path`` itself (not what a symlink there leads to) is a regular file."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def read_small(path: Path, limit: int = 4096, follow: bool = False) -> bytes | None:
    """The first ``limit`` bytes of a regular file at ``path``, or None (missing, a symlink unless
    ``follow``, a FIFO, unreadable)."""
    try:
        with open_regular(path, follow=follow) as f:
            return f.read(limit)
    except OSError:
        return None


def probe_folder(folder: Path, tidy: bool = True) -> None:
    """Find out before a run that ``folder`` can take files: create it (and missing parents) and a
    file in it (``mkstemp``: a new name, ``O_EXCL``), then remove that file and, with ``tidy``, the
    folders created (ranks probing one shared folder at once pass ``tidy=False``). An ``OSError``
    says why not."""
    folder = Path(folder)
    created = [p for p in [folder, *folder.parents] if not p.exists()]
    base = folder.parents[len(created) - 1] if created else folder  # the nearest existing one
    if not base.is_dir():
        raise OSError(errno.ENOTDIR, f"{base} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".sasg-write-test-", dir=folder)
        os.close(fd)
        os.unlink(name)
    finally:
        if tidy:
            for p in created:  # innermost first; rmdir leaves anything someone else put there
                try:
                    p.rmdir()
                except OSError:
                    pass


_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+-")


def file_tag(name: str) -> str:
    """``name`` (an algorithm's) as one file-name component that stays in its folder: every
    character but letters, digits, ``_``, ``+`` and ``-`` is written ``%XX`` (its UTF-8 bytes), so
    ``/``, ``..`` and a leading dot cannot occur. Registered names (:func:`sasg.core.register`)
    use only the safe characters, so their compositions come out unchanged."""
    return "".join(c if c in _SAFE else "".join(f"%{b:02X}" for b in c.encode()) for c in name) or "%"


def os_reason(e: OSError) -> str:
    """Why an ``OSError`` happened, for a one-line message: its ``strerror``, said plainly as
    "permission denied" where it is one (EACCES, or EPERM from an immutable folder, whose
    strerror "Operation not permitted" hides it)."""
    reason = e.strerror or str(e)
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied ({reason})"
    return reason
