"""Atomic file writes: a temporary file in the target folder, then ``os.replace``.

The temporary file is created with mode ``0o666`` filtered by the process umask (what a
plain ``open(path, "w")`` gives a new file); when it replaces an existing file, it takes that
file's permission bits, as rewriting the file in place would keep them. A target that is a
symbolic link is replaced by the file (``os.replace`` never follows it): the link's target is
left unchanged. Temporaries are named ``.<name>.<random>.evonnx.tmp`` (marked as ours); a
killed process (SIGKILL) may leave them behind, and :func:`remove_temporaries` deletes those
of the targets it is given; a temporary still being written is locked (``flock``) and left
alone. Any other exit of the writing block (an error, Ctrl-C, SIGTERM) removes its temporary.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)

try:
    import fcntl
except ImportError:  # not POSIX: temporaries are not locked
    fcntl = None  # type: ignore[assignment]

TMP_SUFFIX = ".evonnx.tmp"
# ``.<target name>.<8 random hex digits>.evonnx.tmp``: only evonnx names its files so.
_TMP_NAME = re.compile(r"^\.(?P<target>.+)\.[0-9a-f]{8}\.evonnx\.tmp$")


def _create_temporary(target: Path) -> tuple[Path, int]:
    """Create an empty, exclusive temporary file beside ``target`` (umask-filtered mode),
    locked (``flock``) while its descriptor is open: :func:`remove_temporaries` leaves it."""
    while True:
        tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}{TMP_SUFFIX}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o666)
        except FileExistsError:
            continue
        if fcntl is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return tmp, fd


def _in_use(tmp: Path) -> bool:
    """Whether a live :func:`atomic_path` holds ``tmp`` (its lock is taken)."""
    if fcntl is None:
        return False
    try:
        fd = os.open(tmp, os.O_RDONLY | _NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False


def _commit(tmp: Path, target: Path) -> None:
    """Move a finished temporary file onto ``target`` (one atomic rename)."""
    os.replace(tmp, target)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds.

    The block may write the temporary file in place or replace it with a new file; either
    way the result gets the permissions described in the module docstring.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp, fd = _create_temporary(target)
    try:  # from here on, any exit (an error, Ctrl-C, SIGTERM) removes the temporary
        try:
            old = os.lstat(target)  # a symbolic link is replaced, its target never read
            regular = stat.S_ISREG(old.st_mode)
            mode = stat.S_IMODE(old.st_mode if regular else os.stat(tmp).st_mode)
        except FileNotFoundError:
            mode = stat.S_IMODE(os.stat(tmp).st_mode)
        yield tmp
        os.chmod(tmp, mode)
        _commit(tmp, target)
    except OSError as exc:
        raise _naming(exc, target, tmp) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.close(fd)


def _naming(exc: OSError, target: Path, tmp: Path) -> OSError:
    """``exc`` naming ``target`` where it names no file or only our temporary (a full disk
    raises from ``write`` with no file name); other errors are returned as they are."""
    from evonnx.errors import EvonnxError

    if isinstance(exc, EvonnxError) or exc.errno is None:
        return exc
    if exc.filename is not None and Path(exc.filename) != tmp:
        return exc
    return OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(target))


def temporary_target(name: str) -> str | None:
    """The file name an :func:`atomic_path` temporary named ``name`` was for, else ``None``."""
    match = _TMP_NAME.match(name)
    return match.group("target") if match else None


def remove_temporaries(
    folder: str | Path, targets: Callable[[str], bool] = lambda _name: True
) -> list[Path]:
    """Delete the temporaries :func:`atomic_path` left in ``folder`` for file names that
    ``targets`` accepts (regular files only, never a link); returns them."""
    removed = []
    for tmp in sorted(Path(folder).glob(f".*{TMP_SUFFIX}")):
        target = temporary_target(tmp.name)
        if target is None or not targets(target):
            continue
        try:
            if not stat.S_ISREG(os.lstat(tmp).st_mode) or _in_use(tmp):
                continue
            tmp.unlink()
        except FileNotFoundError:  # its writer finished meanwhile
            continue
        removed.append(tmp)
    if removed:
        logger.info("removed %d stale temporary file(s) in %s", len(removed), folder)
    return removed


def dangling_link(path: str | Path) -> str | None:
    """``"P is a dangling symlink to T"`` when ``path`` is a symbolic link to nothing (its
    target, or a link further on, does not exist), else ``None``."""
    p = Path(path)
    try:
        if not p.is_symlink() or p.exists():
            return None
        return f"{p} is a dangling symlink to {os.readlink(p)}"
    except OSError:
        return None


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))
