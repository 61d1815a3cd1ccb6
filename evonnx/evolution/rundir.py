"""Run folders: path checks, an exclusive lock for a run's lifetime, and leftovers of kills.

An evolution run owns its folder while it runs: :func:`run_folder` creates it (or refuses a
path that cannot be one) and takes an exclusive lock (``.evonnx.lock``, holding the owner's
pid) before anything else is written there. The lock is an advisory ``flock`` on the lock
file, so the kernel releases it when its owner dies, however it dies: a lock file left by a
dead process is stale by construction and is taken over (POSIX; elsewhere the folder is not
locked, with a warning). A lock file that is a symbolic link is refused, never followed.
Only once the folder is known to hold a run (or nothing) does :func:`sweep` delete the
temporaries a killed run left behind, and only evonnx's own, of run files.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

from evonnx.errors import RunDirectoryError
from evonnx.model.textio import remove_temporaries, temporary_target

logger = logging.getLogger(__name__)

LOCK_NAME = ".evonnx.lock"
_RUN_FILE = re.compile(
    r"^(gen_\d{3,}\.onnx(\.data)?|lineage\.json|lineage\.csv|report\.md|efficiency\.png)$"
)


@contextlib.contextmanager
def run_folder(out: str | Path, resume: bool) -> Iterator[Path]:
    """Own the run folder ``out`` for the duration of the block.

    Args:
        out: The run folder; created (with its parents) unless ``resume`` is set.
        resume: The run continues; ``out`` must exist.

    Yields:
        ``out`` as a path, locked (nothing else in it is touched: see :func:`sweep`).

    Raises:
        RunDirectoryError: ``out`` is a file, cannot be created or written, does not exist
            although ``resume`` is set, its lock file is a link, or another process runs in it.
    """
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise RunDirectoryError(f"run folder {path} is a file, not a folder")
    if resume and not path.exists():
        raise RunDirectoryError(
            f"nothing to resume: {path} does not exist (drop --resume to start a new run)"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirectoryError(f"cannot create run folder {path}: {exc.strerror}") from exc
    with locked(path):
        yield path


def is_run_file(name: str) -> bool:
    """Whether ``name`` is a file an evolution run writes (``gen_NNN.onnx``, lineage...)."""
    return bool(_RUN_FILE.match(name))


def sweep(out: Path) -> None:
    """Delete the temporaries of run files a killed run left in ``out`` (evonnx's own only).

    Call it inside :func:`run_folder`, once ``out`` is known to hold a run or nothing else.
    """
    remove_temporaries(out, is_run_file)


def leftovers(out: Path) -> tuple[list[str], list[str]]:
    """(run files, other files) in ``out``; the lock file and evonnx's temporaries of run
    files count as neither."""
    names = sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME)
    names = [n for n in names if not is_run_file(temporary_target(n) or "")]
    ours = [n for n in names if is_run_file(n)]
    return ours, [n for n in names if n not in ours]


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold the exclusive lock of the existing ``folder``; the lock file is removed on release.

    Raises:
        RunDirectoryError: The lock file is a link or no regular file, cannot be written,
            or another process holds it.
    """
    path = folder / LOCK_NAME
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise RunDirectoryError(
                    f"{path} is a symbolic link; evonnx never follows one (writing its pid "
                    "would overwrite the link's target): remove it"
                ) from exc
            raise RunDirectoryError(f"cannot write in run folder {folder}: {exc.strerror}") from exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise RunDirectoryError(f"{path} is not a regular file; remove it")
        if not _try_lock(fd):
            owner = _read_pid(fd)
            os.close(fd)
            raise RunDirectoryError(
                f"{folder} is in use by another evonnx run (process {owner or 'unknown'}); "
                "wait for it to finish or choose another output folder"
            )
        if _is_current(fd, path):
            break
        os.close(fd)  # a finishing owner removed the file we locked; lock the new one
    stale = _read_pid(fd)
    if stale:
        logger.info("taking over the stale lock of process %s in %s", stale, folder)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.close(fd)


def _try_lock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # not POSIX
        logger.warning("this platform has no flock: the run folder is not locked")
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _is_current(fd: int, path: Path) -> bool:
    try:
        now = os.lstat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino)


def _read_pid(fd: int) -> str:
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return text if text.isdigit() else ""
