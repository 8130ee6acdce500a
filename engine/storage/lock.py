"""One writer at a time: an advisory lock file in the database folder, naming its holder.

Ingests take :func:`writer_lock` for their whole run. A second writer is refused at once with
:class:`DatabaseBusyError`, which names the holder's pid, host, purpose and start time. The lock is an
``flock`` on ``<db>/.lookalike-writer.lock``: the kernel releases it when the holder exits, even by
``kill -9``, so a lock left by a dead process is stale by construction; the next writer takes it over
and logs who held it last. Readers (searches) never take it: LanceDB readers see committed versions.
Databases on object stores (``s3://`` and the like) have no local folder and are not locked.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from engine.core.clock import utc_now
from engine.core.errors import LookalikeError, StorageError

logger = logging.getLogger(__name__)

LOCK_FILE = ".lookalike-writer.lock"


class DatabaseBusyError(LookalikeError, RuntimeError):
    """Another process is writing the database."""


class DatabaseNotWritableError(StorageError):
    """The database folder cannot be written (read-only, permissions, full disk); the message says what to do."""


# LanceDB reports storage failures as RuntimeError("lance error: LanceError(IO): ... <reason> (os error N), <source>")
# (measured on a full tmpfs); the reason is the part before "(os error N)".
_LANCE_IO = re.compile(r"LanceError\(IO\).*?(?:: )?([^:]*?\(os error \d+\))")


def storage_failure(exc: BaseException) -> str | None:
    """A short reason when ``exc`` is the storage failing (full disk, read-only, I/O error); else None."""
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    if isinstance(exc, RuntimeError) and "LanceError(IO)" in str(exc):
        found = _LANCE_IO.search(str(exc))
        return found.group(1).strip() if found else str(exc).split(", /")[0]
    return None


def lock_path(uri: str) -> Path | None:
    """The lock file of a local database; None for object-store URIs."""
    return None if "://" in uri else Path(uri) / LOCK_FILE


def _holder(handle) -> dict:
    handle.seek(0)
    try:
        return json.loads(handle.read() or "{}")
    except json.JSONDecodeError:
        return {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by someone else
    return True


@contextmanager
def writer_lock(uri: str, purpose: str) -> Iterator[dict | None]:
    """Hold the database's writer lock for the ``with`` block; yields the holder record written."""
    path = lock_path(uri)
    if path is None:
        logger.info("database %s is not a local folder: no writer lock", uri)
        yield None
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+", encoding="utf-8")
    except OSError as exc:
        raise DatabaseNotWritableError(f"cannot write to database folder {path.parent}: {exc.strerror or exc}") from exc
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = _holder(handle)
            who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} ({holder.get('purpose', '?')} since {holder.get('since', '?')})"
            raise DatabaseBusyError(
                f"database {uri} is being written by {who}; wait for it to finish and run again "
                f"(searches may run meanwhile)"
            ) from None
        previous = _holder(handle)
        if previous.get("pid") and previous.get("host") == socket.gethostname() and previous["pid"] != os.getpid():
            state = "still running but no longer holds it" if _pid_alive(previous["pid"]) else "no longer running"
            logger.warning("taking over a stale writer lock of pid %s (%s since %s): %s", previous["pid"], previous.get("purpose"), previous.get("since"), state)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "purpose": purpose, "since": utc_now().isoformat(timespec="seconds")}
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps(record))
            handle.flush()
        except OSError as exc:
            raise DatabaseNotWritableError(f"cannot write to database folder {path.parent}: {exc.strerror or exc}") from exc
        try:
            yield record
        finally:
            # Emptied rather than deleted: deleting would let a waiting writer lock a file no one else opens.
            try:
                handle.seek(0)
                handle.truncate()
            except OSError as exc:
                logger.warning("could not clear writer lock %s: %s", path, exc)
            fcntl.flock(handle, fcntl.LOCK_UN)
