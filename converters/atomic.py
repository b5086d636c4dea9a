"""Atomic output folders: build in a temporary sibling, rename into place at the end.

A conversion killed at any point (even with SIGKILL) leaves no DST, only a `.NAME.partial-PID`
sibling, which the next run removes once that PID is gone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

from .errors import ConversionError


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_partials(dst: Path) -> list[Path]:
    """Delete temporary siblings of `dst` left by runs that no longer exist."""
    removed = []
    for p in dst.parent.glob(f".{dst.name}.partial-*"):
        try:
            pid = int(p.name.rsplit("-", 1)[1])
        except ValueError:
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_directory(dst: Path, *, force: bool) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success it becomes `dst`, on any failure it vanishes."""
    dst = Path(dst).absolute()
    if dst.exists() and not force:
        raise ConversionError(f"{dst} already exists (use --force to replace it)")
    if not dst.parent.is_dir():
        raise ConversionError(f"{dst.parent}: no such directory")
    remove_stale_partials(dst)
    tmp = dst.parent / f".{dst.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
    except OSError as e:
        raise ConversionError(f"cannot create {tmp}: {e.strerror}") from None
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if dst.exists():
        old = dst.parent / f".{dst.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.rename(dst, old)
    os.rename(tmp, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
