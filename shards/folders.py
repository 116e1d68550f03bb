"""The one atomic-folder protocol: shard sets (prep) and checkpoints (train) are written with it; its
one-file form, `write_atomic` (manifest.json, summary.json, a trimmed metrics.jsonl); and `on_disk_full`,
which turns a full disk at any write into one DiskFull line naming the folder and the space needed.

    with staged_folder(Path("shards/concat-256")) as staging:
        ...  # write everything into `staging`
    # now shards/concat-256 is the new complete folder; a kill at any instant left the old one or the new one
"""
from __future__ import annotations

import errno
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sftcli import UserError

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(UserError):
    """A write failed for want of space; what was there before is intact."""


def recover_folder(target: Path) -> None:
    """Clean up after writers of `target` that died: restore a complete previous folder that a
    writer killed between its two renames left as `.NAME.old-PID`, remove staging folders."""
    target = Path(target)
    if not target.parent.is_dir():
        return
    for stale in sorted(target.parent.glob(f".{target.name}.tmp-*")) + sorted(target.parent.glob(f".{target.name}.old-*")):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            continue
        if ".old-" in stale.name and not target.exists():
            stale.rename(target)  # the old folder was complete: it only moves aside after the new one is
        else:
            shutil.rmtree(stale, ignore_errors=True)


@contextmanager
def staged_folder(target: Path) -> Iterator[Path]:
    """Write a folder (a shard set, a checkpoint) under a temporary name; swap it in when complete.

    The one atomic-folder protocol: a crash (even SIGKILL) leaves either the previous
    complete folder or the new complete one at `target` (or, between the two renames,
    the previous one as `.NAME.old-PID`, which `recover_folder` puts back). Temporary
    folders are named after the writer's pid so that a later writer can tell stale ones.
    """
    target = Path(target).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_folder(target)
    staging = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _fsync_tree(staging)
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        target.rename(old)
    staging.rename(target)
    _fsync_tree(target.parent, recurse=False)
    shutil.rmtree(old, ignore_errors=True)


def write_atomic(path: Path, text: str) -> None:
    """Write `text` under a temporary name, then rename: a reader never sees half a file."""
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    try:
        tmp.write_text(text)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def is_disk_full(error: BaseException) -> bool:
    """A full disk or quota, as Python (OSError), Arrow (OSError without errno) or the Rust writers of
    tokenizers and safetensors (a plain Exception: "No space left on device (os error 28)") report it.

    >>> is_disk_full(OSError(errno.ENOSPC, "No space left on device")), is_disk_full(OSError(errno.EACCES, "x"))
    (True, False)
    >>> is_disk_full(Exception("No space left on device (os error 28)"))
    True
    """
    if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
        return True
    text = str(error)
    return any(os.strerror(code) in text or f"os error {code}" in text for code in DISK_FULL_ERRNOS)


@contextmanager
def on_disk_full(folder: Path, fix: str, need: int | None = None) -> Iterator[None]:
    """Turn a full disk inside the block into one DiskFull line: `folder`, the free space, `need` bytes
    (when known) and `fix`. Anything else passes through unchanged."""
    try:
        yield
    except Exception as e:
        if not is_disk_full(e):
            raise
        raise DiskFull(f"{folder}: no space left on the device ({mib(free_space(folder))} free"
                       + (f", about {mib(need)} needed" if need else "") + f"); {fix}") from None


def free_space(path: Path) -> int:
    """Free bytes on the file system of `path`, or of its nearest existing parent."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def mib(size: int) -> str:
    """
    >>> mib(3 * 2**20 + 2**19)
    '3.5 MiB'
    """
    return f"{size / 2**20:.1f} MiB"


def folder_bytes(folder: Path) -> int:
    """Bytes of the files below `folder` (0 if it does not exist)."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_tree(folder: Path, recurse: bool = True) -> None:
    """fsync every file below `folder` (with `recurse`) and the folder itself."""
    for child in sorted(Path(folder).rglob("*") if recurse else []):
        if child.is_file():
            with open(child, "rb") as f:
                os.fsync(f.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
