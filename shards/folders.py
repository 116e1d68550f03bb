"""The one atomic-folder protocol: shard sets (prep) and checkpoints (train) are written with it; and its
one-file form, `write_atomic` (manifest.json, summary.json, a trimmed metrics.jsonl).

    with staged_folder(Path("shards/concat-256")) as staging:
        ...  # write everything into `staging`
    # now shards/concat-256 is the new complete folder; a kill at any instant left the old one or the new one
"""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


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
    tmp.write_text(text)
    os.replace(tmp, path)


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
