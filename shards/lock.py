"""One writer per output folder: an advisory `fcntl.flock` on `.NAME.lock` beside the folder.

    with folder_lock(Path("shards/concat-256"), "prep"):
        ...  # write the shard set; a second `prep --out shards/concat-256` stops at once
    # a second writer: FolderBusy "shards/concat-256 is being written by another prep (pid 4242 on node7, since
    #                  2026-12-02 00:10:00 UTC): wait for it to finish, or stop it (kill 4242 on node7)"

The kernel releases a flock when its holder dies, however it dies (SIGKILL included): a lock file
left by a killed process is stale, and the next writer takes it over, with a note on stderr. The file
holds the holder's pid, host and start time, only to name it in the message. It is removed on
release, while still locked (the inode check in `_acquire` keeps that race-free).
On NFS, Linux turns flock into NFS byte-range locks: they hold across machines where the server's
lock service works (NFSv4, or NFSv3 with lockd), and only on one machine with the `nolock` mount
option. Ranks of one torchrun job: only rank 0 takes the lock (train/loop.py).
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sftcli import UserError


class FolderBusy(UserError):
    """Another process holds the folder's lock."""


def lock_path(folder: Path) -> Path:
    folder = Path(folder).absolute()
    return folder.with_name(f".{folder.name}.lock")


@contextmanager
def folder_lock(folder: Path, writer: str, fix: str = "") -> Iterator[None]:
    """Hold `folder`'s lock while the block runs; raise FolderBusy at once if another process holds it.

    `writer` names this command in the other's message ("prep", "train"); `fix` is added to it.
    """
    path = lock_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(path, writer, folder, fix)
    stale = _holder(fd)  # a holder that ended without removing the file was killed
    if "pid" in stale:
        print(f"note: {folder}: taking over the lock of a {stale.get('writer', writer)} that was killed "
              f"({describe(stale)})", file=sys.stderr, flush=True)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"writer": writer, "pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.time()}).encode())
        yield
    finally:
        try:
            path.unlink()  # still locked: no other writer holds this inode
        except FileNotFoundError:
            pass
        os.close(fd)  # releases the lock


def _acquire(path: Path, writer: str, folder: Path, fix: str) -> int:
    """Open and lock `path`; retry when the file was replaced between open and lock (a holder released it)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise FolderBusy(f"{folder} is being written by another {holder.get('writer', writer)} "
                             f"({describe(holder)}): wait for it to finish, or stop it"
                             f"{_kill_hint(holder)}{'; ' + fix if fix else ''}") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _holder(fd: int) -> dict:
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return holder if isinstance(holder, dict) else {}
    except ValueError:  # written this instant, or not ours
        return {}


def describe(holder: dict) -> str:
    """'pid 4242 on node7, since 2026-12-02 00:10:00 UTC' (what the lock file says of its holder).

    >>> describe({"pid": 7, "host": "n1", "started": 0})
    'pid 7 on n1, since 1970-01-01 00:00:00 UTC'
    >>> describe({})
    'pid unknown: it is starting'
    """
    if "pid" not in holder:
        return "pid unknown: it is starting"
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder.get("started", 0)))
    return f"pid {holder['pid']} on {holder.get('host', '?')}, since {since}"


def _kill_hint(holder: dict) -> str:
    if "pid" not in holder:
        return ""
    where = "" if holder.get("host") == socket.gethostname() else f" on {holder.get('host', '?')}"
    return f" (kill {holder['pid']}{where})"
