"""Worker processes that take a share of the batch in the big CPU kernels, over shared memory.

Why processes: NumPy gives the GIL back inside each call, but a thread must take it again between
calls, and at tens of microseconds a call that hand-over costs about as much as the call: two threads
running one Winograd convolution on two halves of a batch did 1.35x the work of one thread, two
processes 2x (``benchmarks/numpy_threads.py``). So on a CPU with several cores, minires starts one
helper process per extra core (:func:`processes`) and hands each a slice of the batch of the
convolutions and BatchNorm passes, while this process computes the first slice itself.

How the data gets there: it does not move. The arrays those kernels read and write live in *shared
memory* -- anonymous memory files (``memfd``) mapped by this process and by the workers -- so a
message names an array by (segment, offset, shape, strides, dtype), a few dozen bytes, whatever its
size. :func:`empty` hands out such arrays (the kernels allocate their outputs with it, so one layer's
output is already shared when the next layer reads it); an input that is not shared yet (the user's
batch, say) is copied in once. Blocks are cached by size class and reused when their arrays die, as
PyTorch's caching allocator does: a training step asks for the same shapes every time.

What runs where: a kernel is a module-level function ``kernel(a, b, part, *args)`` that computes batch
rows ``a:b`` and writes them into its output arrays (or, for a sum over the batch, into ``parts[part]``),
registered with :func:`kernel`. :meth:`Plan.run` sends ``(name, a, b, part, args)`` to each worker, runs
the first slice here, and waits. Every slice is computed by the same code whichever process runs it,
so the results are the ones one process would get (sums over the batch add the slices' partial sums).

Protecting the user: the first big call starts the workers and waits for them (about half a second),
each first passing a self-check on shared memory, so that from then on every big call is split the same
way and a program gives the same numbers on every run; BLAS runs one thread per process while they are used
(else two processes x two BLAS threads fight over two cores). If a worker fails to start, dies or
raises, one warning says so, this process computes the missing slice itself, and the workers are
not used again. ``MINIRES_PROCESSES=1`` turns them off; ``MINIRES_PROCESSES=N`` asks for N processes
in all (default: the cores this process may run on). Linux only (memfd and /proc); elsewhere, and in
a forked child, everything runs in the calling process. CuPy arrays never go to the workers.
"""

from __future__ import annotations

import atexit
import ctypes
import json
import mmap
import os
import select
import struct
import subprocess
import sys
import time
import warnings
from typing import Any, Callable

import numpy as np

from minires.ops._malloc import keep_freed_memory

KERNELS: dict[str, Callable[..., Any]] = {}

#: Below this many bytes of work (about the input plus output of the whole call) a call runs here alone:
#: a round trip to a worker costs ~40-80 us, and starting the workers half a second (after which BLAS runs
#: one thread a process). 4 MiB splits every convolution of ResNet-20 at batch 128 and ResNet-18 at 64, but
#: not a small net like the default digits job's (whose 360-image evaluation batch would start the workers
#: and leave its training steps with one BLAS thread: measured 16-18 s for the job instead of 12-13).
MIN_SPLIT_BYTES = 4 << 20
#: How long the first big call waits for the workers to start before it gives up on them.
START_SECONDS = 60.0
#: Bytes of one shared segment (a block bigger than this gets a segment of its own).
SEGMENT_BYTES = 64 << 20
#: The most shared memory the cache may hold; past it, new arrays are private and their calls run here.
MAX_SHARED_BYTES = 8 << 30

#: How long a process polls for the next message before it sleeps in a blocking read (see :func:`wait_readable`).
SPIN_SECONDS = 2e-3

_HEADER = struct.Struct("<I")


def kernel(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Register ``fn(a, b, part, *args)`` as a kernel the workers may run (by module and name)."""
    KERNELS[f"{fn.__module__}:{fn.__qualname__}"] = fn
    return fn


def processes() -> int:
    """Processes a big kernel is shared by, this one included: ``MINIRES_PROCESSES`` or the usable cores."""
    setting = os.environ.get("MINIRES_PROCESSES", "").strip()
    if setting:
        if not setting.isdigit() or int(setting) < 1:
            raise ValueError(f"MINIRES_PROCESSES must be a positive integer, got {setting!r}")
        return int(setting)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return 1


_SUPPORTED = hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")


def supported() -> bool:
    """Whether this platform can share memory with workers (Linux: memfd_create and /proc)."""
    return _SUPPORTED


# ---------------------------------------------------------------------------------------------------------
# shared memory


def size_class(nbytes: int) -> int:
    """Bytes actually reserved for ``nbytes``: at least 4 KiB, then steps of 1/16 of the next power of two
    (at most 12.5% wasted), so blocks of nearly the same size are reused for each other."""
    n = max(int(nbytes), 4096)
    step = max((1 << (n - 1).bit_length()) // 16, 4096)
    return -(-n // step) * step


class _Segment:
    """One anonymous memory file, mapped here; workers map it through /proc/<pid>/fd/<fd>."""

    def __init__(self, size: int) -> None:
        self.fd = os.memfd_create("minires-shared")
        os.ftruncate(self.fd, size)
        self.map = mmap.mmap(self.fd, size)
        self.size = size
        self.address = ctypes.addressof(ctypes.c_char.from_buffer(self.map))
        self.used = 0


class _Block:
    """Owner of one block: the base of the arrays made on it; the block returns to the cache when it dies."""

    def __init__(self, arena: Arena, key: tuple[int, int, int], interface: dict[str, Any]) -> None:
        self.__array_interface__ = interface
        self._arena = arena
        self._key = key

    def __del__(self) -> None:
        try:
            self._arena.release(self._key)
        except Exception:  # pragma: no cover - interpreter shutdown
            pass


class Arena:
    """Shared-memory blocks, cached by :func:`size_class` (a block is never given back to the system)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.segments: list[_Segment] = []
        self.free: dict[int, list[tuple[int, int, int]]] = {}  # size class -> [(segment, offset, size class)]
        self.reserved = 0

    def release(self, key: tuple[int, int, int]) -> None:
        if os.getpid() == self.pid:
            self.free.setdefault(key[2], []).append(key)

    def _take(self, nbytes: int) -> tuple[int, int, int] | None:
        cls = size_class(nbytes)
        cached = self.free.get(cls)
        if cached:
            try:
                return cached.pop()
            except IndexError:  # pragma: no cover - emptied by another thread meanwhile
                pass
        seg = self.segments[-1] if self.segments else None
        if seg is None or seg.size - seg.used < cls:
            if self.reserved + max(cls, SEGMENT_BYTES) > MAX_SHARED_BYTES:
                return None
            try:
                seg = _Segment(max(cls, SEGMENT_BYTES))
            except OSError:
                return None
            self.segments.append(seg)
            self.reserved += seg.size
        key = (len(self.segments) - 1, seg.used, cls)
        seg.used += cls
        return key

    def empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray | None:
        """A C-contiguous array in shared memory, or None when the cache is full."""
        dtype = np.dtype(dtype)
        if dtype.fields is not None or dtype.hasobject:
            raise TypeError(f"shared memory: plain numeric dtypes only, got {dtype}")
        shape = tuple(int(s) for s in shape)
        key = self._take(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
        if key is None:
            return None
        seg = self.segments[key[0]]
        interface = {"data": (seg.address + key[1], False), "shape": shape, "typestr": dtype.str, "version": 3}
        return np.asarray(_Block(self, key, interface))

    def locate(self, a: np.ndarray) -> tuple[int, int] | None:
        """(segment, byte offset of a's first element) when all of ``a`` lies in one segment, else None."""
        if a.size == 0:
            return None
        low, high = _byte_bounds(a)  # [first byte, one past the last) of a's memory, any strides
        start = a.__array_interface__["data"][0]
        for i, seg in enumerate(self.segments):
            if seg.address <= low and high <= seg.address + seg.size:
                return i, start - seg.address
        return None


_byte_bounds = getattr(np.lib, "array_utils", np).byte_bounds  # numpy 2 moved it out of the top level


_arena: Arena | None = None


def _the_arena() -> Arena | None:
    global _arena
    if not supported():
        return None
    if _arena is None or _arena.pid != os.getpid():  # a forked child must not hand out its parent's blocks
        _arena = Arena()
    return _arena


def empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """``np.empty(shape, dtype)``, in shared memory while workers are in use (so a kernel's output can be
    the next kernel's input without a copy); a private array otherwise."""
    if _pool_active():
        arena = _the_arena()
        a = None if arena is None else arena.empty(shape, dtype)
        if a is not None:
            return a
    return np.empty(shape, dtype=dtype)


def empty_like_layout(a: np.ndarray, dtype: Any = None) -> np.ndarray:
    """An uninitialised array shaped like ``a`` with the same order of strides (channels-last stays so)."""
    order = sorted(range(a.ndim), key=lambda i: (-abs(a.strides[i]), i))
    base = empty(tuple(a.shape[i] for i in order), a.dtype if dtype is None else dtype)
    return base.transpose(np.argsort(order))


def add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a + b`` for two arrays of one shape and dtype, in a's stride order, in shared memory while workers
    are in use (the autograd engine sums gradients with it, so the sum can go to the workers uncopied)."""
    out = empty_like_layout(a) if _pool_active() and a.nbytes >= MIN_SPLIT_BYTES // 8 else None
    if out is None:
        return a + b
    arena = _the_arena()
    n = a.shape[0] if a.ndim else 1
    if a.ndim and arena is not None and arena.locate(a) is not None and arena.locate(b) is not None:
        plan(n, 3 * a.nbytes, a, b).run(_add_rows, a, b, out=(out,))  # each process adds the rows it will read next
    else:
        np.add(a, b, out=out)
    return out


@kernel
def _add_rows(a: int, b: int, part: int, x: np.ndarray, y: np.ndarray, out: np.ndarray) -> None:
    """``out[a:b] = x[a:b] + y[a:b]`` (see :func:`add`)."""
    np.add(x[a:b], y[a:b], out=out[a:b])


def shared(a: np.ndarray) -> np.ndarray | None:
    """``a`` itself when it lies in shared memory, else a shared copy (same stride order); None if full."""
    arena = _the_arena()
    if arena is None:
        return None
    if arena.locate(a) is not None:
        return a
    copy = empty_like_layout(a)
    if arena.locate(copy) is None:
        return None
    np.copyto(copy, a)
    return copy


# ---------------------------------------------------------------------------------------------------------
# messages: JSON with tagged arrays, tuples and windows (no pickle: nothing received is ever run as code)


def encode(value: Any, arena: Arena) -> Any:
    if isinstance(value, np.ndarray):
        where = arena.locate(value)
        if where is None:
            raise ValueError("shared memory: an array argument is not in shared memory")
        return {"array": [where[0], where[1], list(value.shape), list(value.strides), value.dtype.str]}
    if isinstance(value, tuple):
        return {"tuple": [encode(v, arena) for v in value]}
    if isinstance(value, list):
        return [encode(v, arena) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if type(value).__name__ == "Window2d":
        fields = ("input_size", "kernel", "stride", "padding", "dilation", "ceil_mode", "op")
        return {"window": {f: encode(getattr(value, f), arena) for f in fields}}
    raise TypeError(f"shared memory: cannot send a {type(value).__name__} to a worker")


def send(fd: int, message: dict[str, Any]) -> None:
    data = json.dumps(message, separators=(",", ":")).encode()
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


def wait_readable(fd: int, spin: float) -> None:
    """Poll ``fd`` for up to ``spin`` seconds before the blocking read: a process that sleeps in ``read``
    takes tens of microseconds to wake, which is much of a short kernel's time."""
    if spin <= 0:
        return
    end = time.perf_counter() + spin
    poll = select.poll()
    poll.register(fd, select.POLLIN)
    while not poll.poll(0) and time.perf_counter() < end:
        pass


def receive(fd: int) -> dict[str, Any]:
    def exactly(n: int) -> bytes:
        chunks = []
        while n:
            chunk = os.read(fd, n)
            if not chunk:
                raise EOFError("shared memory: the other process closed the pipe")
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    (length,) = _HEADER.unpack(exactly(_HEADER.size))
    return json.loads(exactly(length))


# ---------------------------------------------------------------------------------------------------------
# the workers


class _Worker:
    def __init__(self) -> None:
        import minires

        root = os.path.dirname(os.path.dirname(os.path.abspath(minires.__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "MINIRES_NUM_THREADS", "MINIRES_PROCESSES"):
            env[name] = "1"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from minires.ops._procworker import main; main()", str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.out, self.inp = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        self.ready = False
        self.segments = 0  # segments the worker has been told about

    def poll_ready(self) -> bool:
        if not self.ready and select.select([self.inp], [], [], 0)[0]:
            reply = receive(self.inp)
            if reply.get("ready") is not True:
                raise RuntimeError(reply.get("error", "the worker did not start"))
            self.ready = True
        return self.ready

    def submit(self, arena: Arena, name: str, a: int, b: int, part: int, args: list[Any]) -> None:
        message: dict[str, Any] = {"kernel": name, "rows": [a, b, part], "args": args}
        if self.segments < len(arena.segments):
            message["segments"] = [[s.fd, s.size] for s in arena.segments[self.segments :]]
            message["first_segment"] = self.segments
            self.segments = len(arena.segments)
        send(self.out, message)

    def wait(self) -> None:
        wait_readable(self.inp, SPIN_SECONDS)
        reply = receive(self.inp)
        if "error" in reply:
            raise RuntimeError(reply["error"])

    def close(self) -> None:
        try:
            self.proc.stdin.close()  # type: ignore[union-attr]
            self.proc.wait(timeout=2)
        except Exception:  # pragma: no cover - already gone, or stuck
            self.proc.kill()


def _self_check(worker: _Worker) -> None:
    """Before a worker's first slice: it must read and write shared memory as this process sees it."""
    arena = _the_arena()
    if arena is None:
        raise RuntimeError("no shared memory")
    x, out = arena.empty((64,), np.float64), arena.empty((64,), np.float64)
    if x is None or out is None:
        raise RuntimeError("no room in shared memory for the self-check")
    x[...] = np.arange(64.0)
    out[...] = np.nan
    worker.submit(arena, f"{__name__}:_check_rows", 0, 64, 1, [encode(x, arena), encode(out, arena)])
    worker.wait()
    if not np.array_equal(out, 2 * np.arange(64.0) + 1):
        raise RuntimeError("the worker's self-check computed wrong values")


class _Pool:
    def __init__(self, count: int) -> None:
        self.pid = os.getpid()
        self.workers = [_Worker() for _ in range(count)]
        self.blas_limit: Any = None

    def ready_workers(self) -> list[_Worker]:
        ready = []
        for w in self.workers:
            if not w.ready and w.poll_ready():
                _self_check(w)
            if w.ready:
                ready.append(w)
        if ready and self.blas_limit is None:
            from threadpoolctl import threadpool_limits

            self.blas_limit = threadpool_limits(limits=1, user_api="blas")  # for as long as the pool runs
        return ready

    def close(self) -> None:
        for w in self.workers:
            w.close()
        if self.blas_limit is not None:
            self.blas_limit.restore_original_limits()
            self.blas_limit = None


_pool: _Pool | None = None
_broken = False  # a worker failed: everything runs here from now on


def _pool_active() -> bool:
    return _pool is not None and _pool.pid == os.getpid() and not _broken


def _get_pool() -> _Pool | None:
    global _pool, _broken
    if _broken or not supported():
        return None
    if _pool is not None and _pool.pid == os.getpid():
        return _pool
    count = processes() - 1
    if count < 1:
        return None
    try:
        _pool = _Pool(count)
    except Exception as err:  # noqa: BLE001 - any failure to start means: compute here
        _give_up(f"could not start worker processes ({err})")
        return None
    # Wait for every worker (and its self-check) now: splitting only once they answer would make the
    # first calls' rounding depend on how fast they started, and the same program give other numbers.
    deadline = time.monotonic() + START_SECONDS
    try:
        while len(_pool.ready_workers()) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready after {START_SECONDS:.0f} s")
            time.sleep(0.005)
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        _give_up(f"a worker process failed to start ({err})")
        return None
    return _pool


def _give_up(reason: str) -> None:
    global _broken
    _broken = True
    warnings.warn(f"minires: {reason}; computing in this process only from now on", RuntimeWarning, stacklevel=3)
    if _pool is not None and _pool.pid == os.getpid():
        _pool.close()


def _kill() -> None:
    """Stop the workers at once (SIGKILL) and forget them: the next big call starts new ones."""
    if _pool is not None and _pool.pid == os.getpid():
        for w in _pool.workers:
            w.proc.kill()
            w.proc.wait()
    shutdown()


def shutdown() -> None:
    """Stop the workers (they also stop by themselves when this process exits)."""
    global _pool
    if _pool is not None and _pool.pid == os.getpid():
        _pool.close()
    _pool = None


def reset() -> None:
    """Stop the workers and forget a failure, so the next big call starts them again (for tests)."""
    global _broken
    shutdown()
    _broken = False


atexit.register(shutdown)


def start() -> int:
    """Start the workers now (and wait until they answer); returns how many there are. For benchmarks and
    tests, so that no timed call starts them: a program never needs this (the first big call starts them)."""
    pool = _get_pool()
    return 0 if pool is None else len(pool.workers)


class Plan:
    """How one call splits its batch of ``n``: ``parts`` slices, the first computed here."""

    def __init__(self, n: int, workers: list[_Worker]) -> None:
        self.n = n
        self.workers = workers
        self.parts = len(workers) + 1

    def bounds(self) -> list[tuple[int, int]]:
        edges = [round(i * self.n / self.parts) for i in range(self.parts + 1)]
        return list(zip(edges[:-1], edges[1:]))

    def run(self, fn: Callable[..., Any], *args: Any, out: tuple[np.ndarray, ...] = ()) -> None:
        """``fn(a, b, part, *args, *out)`` for every slice: the first here, the others in the workers."""
        if self.parts == 1:
            fn(0, self.n, 0, *args, *out)
            return
        arena = _the_arena()
        assert arena is not None
        copies = tuple(shared(a) if isinstance(a, np.ndarray) else a for a in args)
        if any(c is None and a is not None for a, c in zip(args, copies)) or any(arena.locate(o) is None for o in out):
            fn(0, self.n, 0, *args, *out)  # shared memory is full: all here
            return
        args = copies
        name = f"{fn.__module__}:{fn.__qualname__}"
        message = [encode(v, arena) for v in (*args, *out)]  # raises before anything was sent
        bounds = self.bounds()
        sent: list[tuple[_Worker, tuple[int, int], int]] = []
        failure = None
        for part, worker in enumerate(self.workers, start=1):
            try:
                worker.submit(arena, name, *bounds[part], part, message)
                sent.append((worker, bounds[part], part))
            except OSError as err:
                failure = failure or f"a worker process failed ({err})"
                fn(*bounds[part], part, *args, *out)
        try:
            fn(*bounds[0], 0, *args, *out)
        finally:
            try:
                for worker, (a, b), part in sent:
                    try:
                        worker.wait()
                    except (RuntimeError, OSError, EOFError, ValueError) as err:
                        failure = failure or f"a worker process failed ({err})"
                        fn(a, b, part, *args, *out)
            except BaseException:  # e.g. Ctrl-C while waiting: a worker may still be writing into these arrays
                _kill()  # so stop it before anything else runs (the next big call starts new workers)
                raise
            if failure:
                _give_up(failure)


@kernel
def _check_rows(a: int, b: int, part: int, x: np.ndarray, out: np.ndarray) -> None:
    """The workers' self-check (:func:`_self_check`): ``out[a:b] = x[a:b] * 2 + part``."""
    np.multiply(x[a:b], 2, out=out[a:b])
    out[a:b] += part


def plan(n: int, work_bytes: int, *arrays: Any, min_bytes: int | None = None) -> Plan:
    """How to split a call over a batch of ``n``: over the workers (at most n processes) when the call is
    big enough (``work_bytes`` >= ``min_bytes``, by default :data:`MIN_SPLIT_BYTES`) and every array is a
    NumPy array; else one slice, here. The first such call starts the workers and waits for them.
    (A worker never has workers of its own: it runs with ``MINIRES_PROCESSES=1``.)"""
    least = MIN_SPLIT_BYTES if min_bytes is None else min_bytes
    if n < 2 or work_bytes < least or any(type(a) is not np.ndarray for a in arrays if a is not None):
        return Plan(n, [])
    keep_freed_memory()
    pool = _get_pool()
    if pool is None:
        return Plan(n, [])
    try:
        workers = pool.ready_workers()[: n - 1]  # at least one sample a process
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        _give_up(f"a worker process failed to start ({err})")
        return Plan(n, [])
    return Plan(n, workers)


__all__ = ["KERNELS", "MIN_SPLIT_BYTES", "Plan", "add", "empty", "kernel", "plan", "processes", "reset", "shared", "shutdown", "start"]
