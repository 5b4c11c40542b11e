"""Child processes of ``ffhquv serve all``: started, watched, restarted with backoff, and tied to
the parent's life.

* A child asks the kernel for SIGKILL when its parent dies (``prctl(PR_SET_PDEATHSIG)``, Linux;
  :func:`die_with_parent`, called by the child itself right after start, then it checks that the
  parent it was started by is still its parent, which closes the race with a parent that died
  during the child's start). SIGKILL, not SIGTERM: with the gateway gone there is no caller
  left to drain calls for, and a graceful stop plus interpreter teardown of a process with torch
  loaded took tens of seconds on a loaded machine, during which the orphan held its port and
  memory. (``serve all``'s own orderly stop still sends SIGTERM and lets children drain.) The
  children also share ``serve all``'s process group, so one ``kill -- -PGID`` reaches them all.
* The children stop in order: the gateways first (:meth:`Supervisor.add`'s ``stop_first``;
  :meth:`Supervisor.begin_stop` sends them SIGTERM as soon as ``serve all`` is told to stop),
  then, once they are gone, the services behind them, so a photo in flight finishes its later
  stages. A terminal's Ctrl-C reaches the whole process group: the children ignore SIGINT
  (:func:`stop_signals`) and leave the order to ``serve all``.
* :class:`Supervisor` polls its children; a dead one is logged (``child exited``), counted
  (``ffhquv_child_restarts_total{service}``) and started again on the same port after a backoff
  that doubles per quick failure (1 s, 2 s, 4 s ... 30 s) and resets once a child stayed up for a
  minute. A process still starting (launched, not yet healthy) is announced with
  :meth:`Supervisor.starting`, so that :meth:`Supervisor.stop` ends it too instead of waiting
  for its start.

The kernel's parent-death signal belongs to the *thread* that forked the child: the supervisor
starts every child (first start and restarts) from the main thread or from its own thread, both
of which live as long as ``serve all``.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ffhquv import metrics

log = logging.getLogger(__name__)

PARENT_PID_ENV = "FFHQUV_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def parent_death_signal(sig: int) -> bool:
    """Ask the kernel to send this process ``sig`` when the thread that forked it ends
    (``prctl(PR_SET_PDEATHSIG)``; Linux only). Also usable as a ``preexec_fn`` for a program
    that cannot call it itself. Returns True when armed."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):  # not Linux: rely on the process group
        return False


def stop_signals() -> tuple[int, ...]:
    """The signals a server process stops on: SIGTERM and SIGINT, but only SIGTERM in a child
    of ``serve all`` (``FFHQUV_PARENT_PID`` set), which then ignores SIGINT: a terminal's
    Ctrl-C reaches every process of the group at once, and the services must outlive the
    gateways' drain (``serve all`` stops them in order). Call it in the main thread."""
    if not os.environ.get(PARENT_PID_ENV):
        return (signal.SIGTERM, signal.SIGINT)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return (signal.SIGTERM,)


def die_with_parent(sig: int = signal.SIGKILL) -> bool:
    """In a child of ``serve all`` (``FFHQUV_PARENT_PID`` set): have the kernel send ``sig`` when
    the parent dies, and exit at once when it is already gone. Returns True when armed."""
    want = os.environ.get(PARENT_PID_ENV)
    if not want:
        return False
    if not parent_death_signal(sig):
        log.warning("prctl(PR_SET_PDEATHSIG) failed", extra={"errno": ctypes.get_errno()})
        return False
    if os.getppid() != int(want):
        log.warning("parent already gone; exiting", extra={"parent": want})
        os._exit(0)
    return True


@dataclass
class Child:
    """One supervised service: how to start it and its current process."""

    name: str
    start: Callable[[int], tuple[subprocess.Popen, str]]  # port -> (process, address)
    proc: subprocess.Popen | None = None
    address: str = ""
    port: int = 0
    started_at: float = 0.0
    failures: int = 0
    restarts: int = 0
    stop_first: bool = False  # a gateway: stopped (and drained) before the others
    history: list[dict] = field(default_factory=list)


class Supervisor:
    """Starts children, restarts the ones that die, stops them all on :meth:`stop`.

    Args:
        backoff: first delay before a restart, seconds (doubled per quick failure).
        max_backoff: the longest delay, seconds.
        stable_s: a child up this long has its backoff reset.
        poll_s: how often the children are checked.
    """

    def __init__(self, backoff: float = 1.0, max_backoff: float = 30.0, stable_s: float = 60.0,
                 poll_s: float = 0.2):
        self.backoff, self.max_backoff = backoff, max_backoff
        self.stable_s, self.poll_s = stable_s, poll_s
        self.children: dict[str, Child] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._starting: set[subprocess.Popen] = set()

    def add(self, name: str, start: Callable[[int], tuple[subprocess.Popen, str]],
            started: tuple[subprocess.Popen, str] | None = None,
            stop_first: bool = False) -> str:
        """Supervise ``name``: ``started`` (process, address) when it already runs, else start it
        now (port 0 = a free one); ``start(port)`` restarts it. ``stop_first``: a caller of the
        others (a gateway), stopped before them. Returns its address."""
        child = Child(name, start, stop_first=stop_first)
        child.proc, child.address = started or start(0)
        child.port = int(child.address.rsplit(":", 1)[1])
        child.started_at = time.monotonic()
        with self._lock:
            self.children[name] = child
        metrics.CHILD_UP.labels(name).set(1)
        return child.address

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="supervisor", daemon=True)
        self._thread.start()

    def _delay(self, child: Child) -> float:
        if time.monotonic() - child.started_at >= self.stable_s:
            child.failures = 0
        d = min(self.max_backoff, self.backoff * 2 ** child.failures)
        child.failures += 1
        return d

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            for child in list(self.children.values()):
                if self._stop.is_set():
                    return
                proc = child.proc
                if proc is None or proc.poll() is None:
                    continue
                self._restart(child, proc.returncode)

    def _restart(self, child: Child, code: int) -> None:
        metrics.CHILD_UP.labels(child.name).set(0)
        delay = self._delay(child)
        log.warning("child exited; restarting", extra={
            "child": child.name, "exit_code": code, "pid": child.proc.pid if child.proc else None,
            "backoff_s": delay, "restarts": child.restarts})
        t_dead = time.monotonic()
        if self._stop.wait(delay):
            return
        while not self._stop.is_set():
            try:
                proc, address = child.start(child.port)
            except Exception as e:  # noqa: BLE001 - keep trying with a longer backoff
                if self._stop.is_set():  # stopped while starting (see starting())
                    return
                delay = self._delay(child)
                log.error("restart failed", extra={"child": child.name, "error": str(e)[:300],
                                                   "backoff_s": delay})
                if self._stop.wait(delay):
                    return
                continue
            if self._stop.is_set():
                _terminate([proc])
                return
            child.proc, child.address = proc, address
            child.started_at = time.monotonic()
            child.restarts += 1
            child.history.append({"exit_code": code, "down_s": child.started_at - t_dead})
            metrics.CHILD_RESTARTS.labels(child.name).inc()
            metrics.CHILD_UP.labels(child.name).set(1)
            log.warning("child restarted", extra={
                "child": child.name, "pid": proc.pid, "address": address,
                "down_s": round(child.started_at - t_dead, 2)})
            return

    def starting(self, proc: subprocess.Popen, done: bool = False) -> None:
        """Announce a child process that is starting (``done``: it is up, or gone); a stop
        meanwhile terminates it. Ended at once when the supervisor is already stopping."""
        with self._lock:
            if done:
                self._starting.discard(proc)
                return
            self._starting.add(proc)
        if self._stop.is_set():
            _terminate([proc], timeout=5.0)

    def begin_stop(self) -> None:
        """No more restarts, and SIGTERM now to the children that stop first (the gateways:
        they drain their calls while the services behind them still serve); :meth:`stop`
        waits for them."""
        self._stop.set()
        for p in self._procs(first=True):
            if p.poll() is None:
                p.terminate()

    def _procs(self, first: bool) -> list[subprocess.Popen]:
        with self._lock:
            children = list(self.children.values())
        return [c.proc for c in children if c.proc is not None and c.stop_first == first]

    def stop(self, timeout: float = 15.0, drain: float = 0.0) -> None:
        """Stop supervising, then stop the children in order: SIGTERM to the ``stop_first``
        ones (the gateways; SIGKILL to what is left after ``drain + timeout`` seconds), then
        to the others (SIGKILL after ``timeout``)."""
        self._stop.set()
        with self._lock:
            starting = list(self._starting)
        _terminate(starting, timeout)  # a restart under way: its wait for health ends now
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=timeout + 30)
        with self._lock:
            starting = list(self._starting)
        _terminate([*starting, *self._procs(first=True)], drain + timeout)
        _terminate(self._procs(first=False), timeout)


def _terminate(procs: list[subprocess.Popen], timeout: float = 15.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    end = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)
