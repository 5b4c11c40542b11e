"""CUDA-graph replay of the fitter's optimisation steps.

A fitting step (forward, backward, Adam) is a few hundred small kernels. On a GPU its time goes
to Python and kernel launches, not arithmetic (BENCHMARKS.md: a ``fast`` fit made 25k launches,
1.65 s of host time against 86 ms of GPU time). :class:`StepRunner` records one step into a
``torch.cuda.CUDAGraph`` and replays it: one launch per step.

A step is split in two:

* ``prepare(i)`` runs eagerly before every step, in both modes: whatever changes with the step
  number (learning-rate schedules, gates) or must talk to the host (nvdiffrast's rasteriser
  reads its work counters back). It must write into tensors that keep their storage
  (``copy_``, ``fill_``): the graph reads them by address.
* ``body()`` is forward + ``backward()`` + ``optimizer.step()`` and returns a dict of tensors
  (the loss terms). It is recorded once, so it must have static shapes and never synchronise
  with the host: no ``.item()`` / ``float()``, boolean-mask indexing, ``nonzero``, or tensors
  built from Python lists on the device. Its outputs are overwritten by every replay.

Without CUDA, or with graphs turned off (``FFHQUV_CUDA_GRAPHS=0``), the same two functions run
eagerly, so CPU and GPU fits share one code path. A capture that fails is logged once and the
remaining steps run eagerly.

A recorded step is kept: a stage builds its step and every tensor the step reads (parameters,
Adam's state, the photo inputs) once per setting and batch size, and :func:`cached_program`
keeps that program for the face model (a small LRU, ``FFHQUV_CUDA_GRAPH_PROGRAMS``). The next
fit with the same setting copies its inputs into the program's tensors, zeroes the optimiser
(:meth:`Adam.reset`) and replays every one of its steps: no eager warm-up steps, no capture and
no release of the device cache a fit (BENCHMARKS.md, eighteenth session).
"""

from __future__ import annotations

import gc
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch
from torch import Tensor

from ffhquv import config
from ffhquv.errors import Cancelled

log = logging.getLogger(__name__)

Body = Callable[[], dict[str, Tensor]]
Prepare = Callable[[int], None]
OnStep = Callable[[int, dict[str, Tensor]], None]

_WARNED: set[str] = set()
T = TypeVar("T")


def graphs_enabled(device: torch.device | str, backend=None) -> bool:
    """Whether steps on ``device`` are replayed as CUDA graphs.

    True on CUDA when the rasteriser (if the step renders) can be captured
    (``backend.capturable``), unless the environment sets ``FFHQUV_CUDA_GRAPHS=0``.
    """
    if torch.device(device).type != "cuda":
        return False
    if not config.cuda_graphs():
        return False
    return backend is None or bool(getattr(backend, "capturable", False))


def compiled(fn: Callable[..., T], device: torch.device | str) -> Callable[..., T]:
    """``fn`` through ``torch.compile`` on CUDA when ``FFHQUV_COMPILE`` is on, else ``fn``.

    A step's forward and backward are hundreds of elementwise kernels of 1-2 us each, and a
    batch's GPU time is their count, not their size (BENCHMARKS.md, twenty-fifth session):
    Inductor fuses runs of them into one kernel each. The stages pass functions of tensor
    arithmetic alone: nvdiffrast's extension calls break dynamo's graph (compiling stage 3's
    whole loss gave 68 breaks and endless recompiles). A few programs a function, whatever the
    batch sizes: a batch of one, then (on the second size dynamo meets) one whose size is
    symbolic, the batch or stage 3's texture side (:func:`configure_dynamo`); the first
    steps of a step program of a new kind, its warm-up before the capture
    (:class:`StepRunner`), pay for the compile and the recorded graph replays the fused
    kernels: 25-60 s a compile in a new process on an H100 (about 4 min for a first fit of a
    batch of one and one of two, thirty-fourth session), 12-35 s a shape from torch's on-disk
    cache, for a warm batch of 4 1.32-1.43 s
    instead of 1.47-1.52 s (BENCHMARKS.md, twenty-sixth session). Hence off by default (a cold
    ``ffhquv fit`` would pass 12 s) and on in ``serve all``'s CUDA fitters, which compile once
    while they warm up (thirty-sixth session: 32 clients 10.3 photos/s against 8.85). A
    function dynamo cannot take runs eagerly.

    Args:
        fn: a pure tensor function (no host synchronisation; the batch from its tensors'
            shapes, no closed-over batch size).
        device: where it runs; only CUDA compiles.
    """
    if torch.device(device).type != "cuda" or not config.compile_steps():
        return fn
    configure_dynamo()
    return torch.compile(fn)


def configure_dynamo() -> None:
    """torch._dynamo's settings for :func:`compiled` (process-wide; imports torch._dynamo)."""
    from torch._dynamo import config as cfg

    # one entry per program (batch size, setting) and grad mode: more than torch's default 8
    cfg.cache_size_limit = max(cfg.cache_size_limit, 64)
    # a batch of one is compiled for itself, every larger batch by a program whose batch is
    # symbolic (dynamo's automatic dynamic shapes, on the second size it meets): the texture
    # pyramid's levels are parameters, whose shapes dynamo would otherwise keep static, and
    # the functions take the batch from their tensors' shapes, never from a closed-over int
    # (each batch size was a compile of its own: 12-160 s on a request)
    cfg.force_parameter_static_shapes = False
    cfg.suppress_errors = True


class Adam:
    """``torch.optim.Adam``'s update over parameter groups, without ``torch.optim.Optimizer``.

    The step is torch's own functional Adam (:func:`torch.optim.adam.adam`, the function the
    class calls, given only arguments it has had since torch 2.4) with the class's defaults
    and state (``exp_avg``, ``exp_avg_sq``, a float32 step counter: on the host, or on the
    device when ``capturable``), so the arithmetic is the same. The class itself is left out
    because constructing any ``Optimizer`` imports ``torch._dynamo`` (with sympy, triton and
    FSDP) the first time: 1-5 s of a new process's first fit (BENCHMARKS.md, sixth
    session), for nothing the fitter uses.

    Args:
        groups: dicts with ``params`` (tensors to optimise) and ``lr`` (float, or a 0-d
            device tensor when ``capturable``).
        capturable: step counters on the device, so that a step can be recorded in a CUDA
            graph (:class:`StepRunner`).
        betas, eps: as ``torch.optim.Adam``'s (its defaults).

    On CUDA the step is torch's fused kernel (``fused=True``: one kernel a group where the
    foreach implementation launched 11-15, a quarter of a stage-1 step's kernels and 60 of a
    stage-3 step's 1 016 on the H200, BENCHMARKS.md twenty-fifth session); on the host torch's
    default, as before.
    """

    def __init__(self, groups: list[dict], *, capturable: bool = False,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.param_groups = [{**g, "params": list(g["params"])} for g in groups]
        self.capturable = capturable
        self.fused = all(p.is_cuda for g in self.param_groups for p in g["params"])
        self.betas = betas
        self.eps = eps
        # the fused kernel takes float32 step counters on the device (torch.optim.Adam's own)
        scalar = (torch.float64 if torch.get_default_dtype() == torch.float64 and not self.fused
                  else torch.float32)
        self.state: dict[Tensor, dict[str, Tensor]] = {}
        for g in self.param_groups:
            for p in g["params"]:
                self.state[p] = {
                    "step": torch.zeros((), dtype=scalar,
                                        device=p.device if capturable or self.fused
                                        else "cpu"),
                    "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                    "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}

    @torch.no_grad()
    def reset(self) -> None:
        """Back to a new optimiser's state (moments and step counters zero), in place: a
        recorded step keeps reading the same tensors."""
        for st in self.state.values():
            for t in st.values():
                t.zero_()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop (or zero) the gradients of every parameter."""
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        """One Adam step of every parameter that has a gradient."""
        from torch.optim.adam import adam

        for g in self.param_groups:
            ps = [p for p in g["params"] if p.grad is not None]
            if not ps:
                continue
            st = [self.state[p] for p in ps]
            adam(ps, [p.grad for p in ps], [s["exp_avg"] for s in st],
                 [s["exp_avg_sq"] for s in st], [], [s["step"] for s in st],
                 foreach=None if self.fused else (True if self.capturable else None),
                 capturable=self.capturable, differentiable=False,
                 fused=True if self.fused else None, grad_scale=None, found_inf=None,
                 has_complex=any(torch.is_complex(p) for p in ps),
                 amsgrad=False, beta1=self.betas[0],
                 beta2=self.betas[1], lr=g["lr"], weight_decay=0.0, eps=self.eps,
                 maximize=False)


def make_adam(groups: list[dict], *, graph: bool) -> Adam:
    """Adam over parameter groups (dicts with ``params`` and a float ``lr``).

    In graph mode the optimizer is ``capturable`` (its step counters live on the device) and
    each group's learning rate is a 0-d device tensor, so :func:`set_lr` can change it between
    replays without recording a new graph.
    """
    if graph:
        groups = [{**g, "lr": torch.tensor(float(g["lr"]), device=g["params"][0].device)}
                  for g in groups]
        return Adam(groups, capturable=True)
    return Adam(groups)


def set_lr(opt: Adam, index: int, value: float) -> None:
    """Set the learning rate of parameter group ``index`` (a device tensor in graph mode)."""
    g = opt.param_groups[index]
    if isinstance(g["lr"], Tensor):
        g["lr"].fill_(value)
    else:
        g["lr"] = value


_CAPTURE_STREAMS: dict[int, torch.cuda.Stream] = {}


@contextmanager
def capturing(g: torch.cuda.CUDAGraph) -> Iterator[None]:
    """Record the CUDA work of the ``with`` body into ``g``: ``torch.cuda.graph(g,
    capture_error_mode="thread_local")`` (one side stream per device, reused by every
    capture; the device's cached blocks released first) without its release of the pinned
    host memory cache (``torch._C._host_emptyCache``). That release made every fit
    allocate its pinned copy buffers again (:func:`~services.fitter.texture.hostcopy.to_host`):
    21 ``cudaHostAlloc`` / ``cudaFreeHost`` pairs a photo alone, 34 a batch of 4, about 3 ms
    and 1 ms each on the H200 (BENCHMARKS.md, seventeenth session).

    ``thread_local``: CUDA calls of other threads (another fit on the same GPU) neither break
    this capture nor fail because of it.

    Python's cyclic garbage collector runs first (as ``torch.cuda.graph`` does) and not
    during the capture: a collection inside it, on this thread, can free an unreachable
    ``CUDAGraph`` of an earlier program, whose ``cudaGraphExecDestroy`` is not permitted while
    the stream captures and invalidates the capture ("operation failed due to a previous
    error during capture"; the stage then ran its steps eagerly: H100, twenty-fifth session).
    """
    dev = torch.cuda.current_device()
    stream = _CAPTURE_STREAMS.get(dev)
    if stream is None:
        stream = _CAPTURE_STREAMS[dev] = torch.cuda.Stream()
    torch.cuda.synchronize()
    gc.collect()
    torch.cuda.empty_cache()
    with _no_collection(), torch.cuda.stream(stream):
        g.capture_begin(capture_error_mode="thread_local")
        try:
            yield
        finally:
            g.capture_end()


_GC_LOCK = threading.Lock()
_GC_HOLDERS = 0
_GC_WAS_ENABLED = False


@contextmanager
def _no_collection() -> Iterator[None]:
    """Python's cyclic collector off while any thread's block runs (captures of several
    threads overlap: the last one out turns it back on, if it was on)."""
    global _GC_HOLDERS, _GC_WAS_ENABLED
    with _GC_LOCK:
        if _GC_HOLDERS == 0:
            _GC_WAS_ENABLED = gc.isenabled()
            gc.disable()
        _GC_HOLDERS += 1
    try:
        yield
    finally:
        with _GC_LOCK:
            _GC_HOLDERS -= 1
            if _GC_HOLDERS == 0 and _GC_WAS_ENABLED:
                gc.enable()


class StepRunner:
    """Runs optimisation steps eagerly or as replays of one recorded CUDA graph.

    The first :meth:`run` in graph mode runs ``warmup`` eager steps and records the step; the
    graph is kept, and every later :meth:`run` replays all its steps. The caller puts the
    next fit's values into the tensors ``body`` reads (``copy_``) and resets the optimiser
    (:meth:`Adam.reset`) between runs.

    Args:
        optimizer: the optimizer ``body`` steps (from :func:`make_adam`, same ``graph``).
        body: forward + backward + ``optimizer.step()``; returns the loss terms.
        prepare: eager per-step work before ``body`` (see the module docstring); :meth:`run`
            may give another one for its steps.
        graph: record and replay (CUDA only); False runs everything eagerly.
        warmup: eager steps before recording (they run on a side stream, as PyTorch's graph
            capture requires; they are real steps and count toward ``steps``).
    """

    def __init__(self, optimizer: Adam, body: Body,
                 prepare: Prepare | None = None, *, graph: bool, warmup: int = 3):
        self.opt = optimizer
        self.body = body
        self.prepare = prepare or (lambda i: None)
        self.graph = graph
        self.warmup = max(int(warmup), 1)
        self.replayed = 0  # steps that ran as graph replays, all runs (tests and logs read this)
        self._g: torch.cuda.CUDAGraph | None = None  # the recorded step, once captured
        self._static: dict[str, Tensor] = {}  # its outputs, overwritten by each replay

    def _eager(self, i: int, prepare: Prepare) -> dict[str, Tensor]:
        prepare(i)
        self.opt.zero_grad(set_to_none=True)
        return self.body()

    def _eager_steps(self, steps: range, prepare: Prepare, on_step: OnStep | None,
                     check: Callable[[], None]) -> None:
        for i in steps:
            check()
            out = self._eager(i, prepare)
            if on_step is not None:
                on_step(i, out)

    def _replay(self, steps: range, prepare: Prepare, on_step: OnStep | None,
                check: Callable[[], None]) -> int:
        for i in steps:
            check()
            prepare(i)
            self._g.replay()
            self.replayed += 1
            if on_step is not None:
                on_step(i, self._static)
        return len(steps)

    def run(self, steps: int, *, prepare: Prepare | None = None,
            on_step: OnStep | None = None, cancel: threading.Event | None = None) -> int:
        """Run ``steps`` steps; ``prepare(i)`` before each (default: the constructor's);
        ``on_step(i, terms)`` after each (``terms`` are overwritten by the next replay: copy
        what must be kept).

        Returns:
            How many of the steps ran as graph replays (0 when eager).

        Raises:
            Cancelled: when ``cancel`` is set (checked before every step).
        """
        prep = prepare or self.prepare

        def check() -> None:
            if cancel is not None and cancel.is_set():
                raise Cancelled("fit cancelled")

        if self._g is not None:
            return self._replay(range(steps), prep, on_step, check)
        if not (self.graph and steps > self.warmup and torch.cuda.is_available()):
            self._eager_steps(range(steps), prep, on_step, check)
            return 0

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._eager_steps(range(self.warmup), prep, on_step, check)
        torch.cuda.current_stream().wait_stream(side)

        start = self.warmup
        g = torch.cuda.CUDAGraph()
        check()
        prep(start)
        self.opt.zero_grad(set_to_none=True)
        try:
            with capturing(g):
                static = self.body()
        except Exception as err:  # noqa: BLE001 - any capture problem: finish eagerly
            key = f"{type(err).__name__}: {err}".splitlines()[0][:300]
            if key not in _WARNED:
                _WARNED.add(key)
                # the traceback names the op that broke the capture (the error itself is
                # often only "operation failed due to a previous error during capture")
                log.warning("CUDA graph capture failed, running the steps eagerly: %s", key,
                            exc_info=True)
            torch.cuda.synchronize()
            del g
            self._eager_steps(range(start, steps), prep, on_step, check)
            return 0
        self._g, self._static = g, static
        # the step at ``start`` was recorded, not run: replay it first
        return self._replay(range(start, steps), lambda i: None if i == start else prep(i),
                            on_step, check)


#: the attribute of an owner that holds its programs (most recently used last): they live
#: and go with the owner (as ``FitterCore._model_on``'s copies do); a program's step refers to
#: its owner, so a table keyed by weak references would keep every owner alive
_ATTR = "_step_programs"
_PROGRAMS_GUARD = threading.Lock()


def _programs_of(owner: object) -> OrderedDict[Hashable, object]:
    return vars(owner).setdefault(_ATTR, OrderedDict())


def cached_program(owner: object, key: Hashable, build: Callable[[], T]) -> T:
    """The program of ``key`` kept for ``owner``, built by ``build()`` the first time.

    A program is whatever a stage builds once per setting and batch size: its step
    (a :class:`StepRunner` whose recorded graph later fits replay) and the tensors the step
    reads. The programs of an owner (the face model: they go with it) are a least-recently-
    used list of at most ``FFHQUV_CUDA_GRAPH_PROGRAMS`` (default 16); an evicted program's
    graph and its memory pool are freed with it. ``key`` must name everything the program's
    step bakes in (sizes, loss weights, the batch size, which optional inputs are present).

    The caller keeps one fit at a time on a program (the fitter's per-GPU fit lock).
    """
    with _PROGRAMS_GUARD:
        progs = _programs_of(owner)
        prog = progs.get(key)
        if prog is not None:
            progs.move_to_end(key)
            return prog  # type: ignore[return-value]
    prog = build()
    with _PROGRAMS_GUARD:
        progs[key] = prog
        progs.move_to_end(key)
        limit = max(config.cuda_graph_programs(), 1)
        while len(progs) > limit:
            progs.popitem(last=False)
    return prog


def cached_programs(owner: object) -> int:
    """How many programs are kept for ``owner`` (tests and logs)."""
    with _PROGRAMS_GUARD:
        return len(vars(owner).get(_ATTR, ()))
