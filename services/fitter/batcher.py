"""A dynamic batcher for fit requests: concurrent requests share one batched fit.

Like Triton's dynamic batcher: a request waits at most ``max_delay_s`` for others to join it,
and a batch holds at most ``max_batch`` photos. Only requests with the same :class:`BatchKey`
(core, preset, texture size, seed, intermediates) are fitted together; a request of another key
waits for the next batch. While a batch runs, new requests queue up and form the next one, so
under load batches fill without waiting.

Each request keeps its own deadline and cancellation: a request cancelled while queued leaves
the queue; one cancelled while its batch runs gets :class:`~ffhquv.errors.Cancelled` at once
(its batch-mates carry on; the batch itself stops only when all its requests are cancelled).
One failing photo never fails its batch-mates: when a batch of several fails, each of its
photos is fitted again alone and gets its own result or error.

Pure Python over :meth:`FitterCore.fit_batch`; no gRPC here (the servicer wraps it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field

from ffhquv import metrics
from ffhquv.aligned import AlignedFace
from ffhquv.errors import Cancelled

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, float, str], None]


@dataclass(frozen=True)
class BatchKey:
    """What requests must share to be fitted in one batch."""

    core_id: int
    preset: str
    texture_size: int
    seed: int
    want_intermediates: bool


@dataclass(eq=False)
class FitJob:
    """One queued request. ``future`` resolves to its :class:`FitOutput` or raises its error."""

    face: AlignedFace
    key: BatchKey
    core: object
    progress: ProgressFn | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    # ``geometry(FitGeometry)``: this photo's shape once final, before its result
    geometry: Callable[[object], None] | None = None
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)

    def finish(self, result=None, error: BaseException | None = None) -> None:
        try:  # the request's own thread may resolve it first (cancelled), the worker later
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(result)
        except InvalidStateError:
            pass


class FitBatcher:
    """Coalesces :class:`FitJob` s into batched fits on worker threads.

    Args:
        max_batch: most photos in one fit (1 = no batching: requests are fitted one by one).
        max_delay_s: how long the first request of a batch waits for others when the worker is
            idle (requests that queued while a batch ran start without waiting).
        workers: batches run at a time (each core serialises its GPU fits anyway).
    """

    def __init__(self, max_batch: int = 1, max_delay_s: float = 0.02, workers: int = 1,
                 name: str = "fitter"):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.max_batch = int(max_batch)
        self.max_delay_s = float(max_delay_s)
        self.name = name
        self._queue: list[FitJob] = []
        self._cv = threading.Condition()
        self._busy = 0
        self._closed = False
        # cleared while the fitter warms up: requests queue (and batch up) meanwhile
        self.ready = threading.Event()
        self.ready.set()
        self._threads = [threading.Thread(target=self._loop, name=f"{name}-batcher-{i}",
                                          daemon=True) for i in range(max(1, workers))]
        for t in self._threads:
            t.start()

    # -- public -----------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """True while every worker runs a batch (a new request will queue)."""
        with self._cv:
            return self._busy >= len(self._threads)

    def submit(self, job: FitJob) -> Future:
        """Queue ``job``; returns its future."""
        with self._cv:
            if self._closed:
                raise RuntimeError("batcher is closed")
            self._queue.append(job)
            metrics.QUEUE_DEPTH.labels(self.name).inc()
            self._cv.notify_all()
        return job.future

    def set_ready(self, ready: bool) -> None:
        """Hold batches back (False) while the fitter warms up, or let them go (True)."""
        with self._cv:
            if ready:
                self.ready.set()
            else:
                self.ready.clear()
            self._cv.notify_all()

    def close(self, timeout: float = 10.0) -> None:
        """Cancel the queued jobs and stop the workers, waiting up to ``timeout`` seconds for
        a running batch to end: a worker thread that ran torch work and is still alive when
        the interpreter exits can abort the process in C++ teardown ("terminate called
        without an active exception", seen on ``ffhquv fit`` under load)."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        for j in self._take_all():
            j.finish(error=Cancelled("fitter shutting down"))
        end = time.monotonic() + timeout
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(max(0.0, end - time.monotonic()))

    # -- worker -----------------------------------------------------------------------------
    def _take_all(self) -> list[FitJob]:
        with self._cv:
            jobs, self._queue = self._queue, []
            metrics.QUEUE_DEPTH.labels(self.name).dec(len(jobs))
        return jobs

    def _drop_cancelled(self) -> None:
        """Resolve and remove queued jobs whose request went away (lock held)."""
        keep = []
        for j in self._queue:
            if j.cancel.is_set():
                j.finish(error=Cancelled("fit cancelled while queued"))
                metrics.QUEUE_DEPTH.labels(self.name).dec()
            else:
                keep.append(j)
        self._queue = keep

    def _next_batch(self) -> list[FitJob] | None:
        with self._cv:
            while True:
                self._drop_cancelled()
                if self._closed:
                    return None
                if self._queue and self.ready.is_set():
                    break
                self._cv.wait(timeout=0.2)
            key = self._queue[0].key
            first = self._queue[0].enqueued
            while True:
                same = [j for j in self._queue if j.key == key]
                left = first + self.max_delay_s - time.monotonic()
                if len(same) >= self.max_batch or left <= 0 or self._closed:
                    break
                self._cv.wait(timeout=left)
                self._drop_cancelled()
                if not any(j.key == key for j in self._queue):
                    return []  # all of them went away while waiting
            batch = same[:self.max_batch]
            ids = {id(j) for j in batch}
            self._queue = [j for j in self._queue if id(j) not in ids]
            metrics.QUEUE_DEPTH.labels(self.name).dec(len(batch))
            self._busy += 1
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            if not batch:
                continue
            try:
                now = time.monotonic()
                for j in batch:
                    metrics.FIT_QUEUE_SECONDS.observe(now - j.enqueued)
                metrics.FIT_BATCH_SIZE.observe(len(batch))
                # one batch is one fit: the HPA's ffhquv_inflight_fits keeps meaning "fits
                # running in this pod" (at most FFHQUV_FITTER_CONCURRENCY)
                metrics.INFLIGHT_FITS.inc()
                try:
                    self._run(batch)
                finally:
                    metrics.INFLIGHT_FITS.dec()
            except BaseException as e:  # noqa: BLE001 - never let the worker die
                log.exception("fit batch crashed")
                for j in batch:
                    j.finish(error=e)
            finally:
                with self._cv:
                    self._busy -= 1

    def _run(self, batch: list[FitJob]) -> None:
        live = [j for j in batch if not j.cancel.is_set()]
        for j in batch:
            if j.cancel.is_set():
                j.finish(error=Cancelled("fit cancelled while queued"))
        if not live:
            return
        try:
            outs = self._fit(live)
        except Cancelled as e:
            for j in live:
                j.finish(error=e)
            return
        except Exception as e:  # noqa: BLE001 - isolated below
            if len(live) == 1:
                live[0].finish(error=e)
                return
            log.warning("batch of %d failed (%s); fitting each photo alone", len(live), e)
            for j in live:
                if j.cancel.is_set():
                    j.finish(error=Cancelled("fit cancelled"))
                    continue
                try:
                    j.finish(result=self._fit([j])[0])
                except Exception as e1:  # noqa: BLE001 - this photo's own error
                    j.finish(error=e1)
            return
        for j, o in zip(live, outs, strict=True):
            j.finish(result=o)

    @staticmethod
    def _fit(jobs: list[FitJob]) -> list:
        """One batched fit of ``jobs`` (same key); progress goes to every live request and the
        fit stops only when all of them are cancelled."""
        key, core = jobs[0].key, jobs[0].core
        all_cancelled = threading.Event()

        def progress(stage: str, frac: float, msg: str) -> None:
            live = [j for j in jobs if not j.cancel.is_set()]
            for j in jobs:
                if j.cancel.is_set():
                    j.finish(error=Cancelled("fit cancelled"))
            if not live:
                all_cancelled.set()
                return
            for j in live:
                if j.progress is not None:
                    j.progress(stage, frac, msg)

        def geometry(i: int, geo) -> None:
            j = jobs[i]
            if j.geometry is None or j.cancel.is_set():
                return
            try:
                j.geometry(geo)
            except Exception:  # noqa: BLE001 - one listener never fails its batch-mates
                log.exception("fit geometry listener failed")

        return core.fit_batch([j.face for j in jobs], preset=key.preset,
                              texture_size=key.texture_size, seed=key.seed, progress=progress,
                              cancel=all_cancelled, want_intermediates=key.want_intermediates,
                              on_geometry=geometry)
