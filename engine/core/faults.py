"""Named fault points for fault-injection tests: no-ops unless ``LOOKALIKE_FAULTS`` names them.

Code that writes the database calls :func:`fault_point` at the moments a crash or an I/O error would
hurt most (between two commits, before an index build, ...). In normal runs the call returns at once.
A test process sets ``LOOKALIKE_FAULTS`` to a comma-separated list of ``point@hit=action`` entries:

* ``point``: a name from :data:`FAULT_POINTS`;
* ``hit``: which passage through the point fires (1 = the first; default 1);
* ``action``: a name from :func:`fault_actions`, optionally ``:argument`` (default ``kill``).

Examples: ``store.images_written@3=kill`` (SIGKILL the process on the third batch, between the images
commit and the vectors commit), ``ingest.index=kill:0.05`` (SIGKILL 50 ms after the index build
starts, i.e. inside it), ``store.images_written@2=enospc`` (the second batch fails as on a full disk), ``ingest.write@2=sleep:30``
(a writer that holds the database for 30 s).
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from engine.core.errors import InvalidRequestError
from engine.core.registry import Registry

logger = logging.getLogger(__name__)

FAULTS_ENV = "LOOKALIKE_FAULTS"

FAULT_POINTS: dict[str, str] = {
    "ingest.decode": "mapper: a file was read and hashed, about to be decoded (once per new file)",
    "ingest.encode": "a batch of preprocessed images is about to go through the encoder",
    "ingest.write": "writer: a batch of rows and vectors is about to be written",
    "store.images_written": "write_embedded: the images commit is done, the vectors commit is not",
    "store.vectors_written": "write_embedded: the vectors commit is done, stale error rows are not cleared",
    "ingest.errors": "writer: about to record the batch's error rows",
    "ingest.index": "all batches written; the ANN index build is about to start",
    "ingest.optimize": "about to compact one table (hit 1: images, 2: embeddings, 3: errors)",
    "ingest.observed": "the catalogue took what the scan said of known images (classes, splits, moves, metadata)",
    "ingest.versions": "the ingest's own version is written and maintained; the others are about to be brought in step",
    "ingest.done": "the ingest finished every step",
    "store.user_columns_added": "user metadata columns are in images, not yet in the embeddings tables",
    "store.model_row_dropped": "a dropped version's models row is gone, its table not yet",
    "edit.committed": "a relabel, split or delete is committed to images; no version is brought in step yet",
    "audit.written": "an audit run's findings are upserted; open findings not found again are not yet removed",
    "audit.intent": "an audit decision and the values it replaces are on the finding; the catalogue edit is not made",
    "audit.applied": "an audit decision's catalogue edit is made (every version in step); the finding is still open",
    "audit.restored": "an undo restored the images' labels or splits; the finding still shows the decision",
    "sync.removed": "a sync removed the images whose files are gone; the scan's changes are not taken yet",
    "coverage.deleted": "one version's rows of deleted images are gone; its metadata and new rows are not done",
    "coverage.metadata": "one version's metadata is in step; its new rows are not written",
    "coverage.vectors": "one version's new rows are written; its coverage row is not",
}

FaultAction = Callable[[str, str | None], None]
FAULT_ACTIONS: Registry[FaultAction] = Registry("fault action")


def register_fault_action(name: str, description: str) -> Callable[[FaultAction], FaultAction]:
    return FAULT_ACTIONS.register(name, description)


def fault_actions() -> dict[str, str]:
    return FAULT_ACTIONS.describe()


def _kill_now() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@register_fault_action("kill", "SIGKILL this process; with an argument, that many seconds later (inside the next step)")
def _kill(point: str, argument: str | None) -> None:
    if argument is None:
        _kill_now()
    timer = threading.Timer(float(argument), _kill_now)
    timer.daemon = True
    timer.start()


def _raise_errno(code: int) -> FaultAction:
    def action(point: str, argument: str | None) -> None:
        raise OSError(code, f"{os.strerror(code)} (fault injected at {point})")

    return action


register_fault_action("enospc", "raise OSError(ENOSPC), as a full disk does")(_raise_errno(errno.ENOSPC))
register_fault_action("erofs", "raise OSError(EROFS), as a read-only file system does")(_raise_errno(errno.EROFS))
register_fault_action("eio", "raise OSError(EIO), as a failing device does")(_raise_errno(errno.EIO))


@register_fault_action("lance_enospc", "raise RuntimeError the way LanceDB reports a full disk (as measured on a full tmpfs)")
def _lance_enospc(point: str, argument: str | None) -> None:
    raise RuntimeError(
        "lance error: LanceError(IO): Generic LocalFileSystem error: Unable to copy data to file: "
        f"No space left on device (os error {errno.ENOSPC}), fault injected at {point}"
    )


@register_fault_action("sleep", "pause this thread for the argument's seconds (default 1): holds the step open for concurrency tests")
def _sleep(point: str, argument: str | None) -> None:
    time.sleep(float(argument or 1.0))


@dataclass(frozen=True)
class Fault:
    """One entry of a fault plan."""

    point: str
    hit: int
    action: str
    argument: str | None = None

    def spec(self) -> str:
        return f"{self.point}@{self.hit}={self.action}" + (f":{self.argument}" if self.argument is not None else "")


def parse_faults(spec: str) -> list[Fault]:
    """Parse ``point@hit=action[:argument]`` entries; errors name the valid points and actions."""
    faults = []
    for entry in filter(None, (part.strip() for part in spec.split(","))):
        target, _, action = entry.partition("=")
        point, _, hit = target.partition("@")
        action, _, argument = (action or "kill").partition(":")
        if point not in FAULT_POINTS:
            raise InvalidRequestError(f"unknown fault point {point!r} in {FAULTS_ENV}; choose one of {sorted(FAULT_POINTS)}")
        if action not in FAULT_ACTIONS:
            raise InvalidRequestError(f"unknown fault action {action!r} in {FAULTS_ENV}; choose one of {FAULT_ACTIONS.names()}")
        if hit and not (hit.isdigit() and int(hit) >= 1):
            raise InvalidRequestError(f"fault hit must be a positive integer, got {hit!r} in {entry!r}")
        faults.append(Fault(point, int(hit or 1), action, argument or None))
    return faults


class FaultPlan:
    """Counts passages through each point (thread-safe) and fires the faults planned for them."""

    def __init__(self, faults: list[Fault]) -> None:
        self._faults = {(f.point, f.hit): f for f in faults}
        self._hits: Counter[str] = Counter()
        self._lock = threading.Lock()

    def passed(self, point: str) -> None:
        with self._lock:
            self._hits[point] += 1
            fault = self._faults.get((point, self._hits[point]))
        if fault is not None:
            logger.warning("fault injected: %s", fault.spec())
            FAULT_ACTIONS.get(fault.action)(point, fault.argument)


# The plan is per process, like the environment variable it comes from; rebuilt when the variable changes.
_plans: dict[str, FaultPlan] = {}
_plans_lock = threading.Lock()


def reset_fault_counts() -> None:
    """Forget how often each point was passed (tests that set the same plan twice in one process)."""
    with _plans_lock:
        _plans.clear()


def fault_point(name: str) -> None:
    """Mark a named point; fires the fault ``LOOKALIKE_FAULTS`` plans there, else does nothing."""
    spec = os.environ.get(FAULTS_ENV)
    if not spec:
        return
    if name not in FAULT_POINTS:
        raise InvalidRequestError(f"fault point {name!r} is not declared in FAULT_POINTS")
    with _plans_lock:
        plan = _plans.get(spec)
        if plan is None:
            plan = _plans[spec] = FaultPlan(parse_faults(spec))
    plan.passed(name)
