"""The process group of this run: :func:`init` picks a communicator once; the getters read it.

``init(backend="auto", device="cpu")`` chooses:

- ``"single"`` when the process was not started by an MPI launcher (every collective is the identity),
- ``"mpi"`` under ``mpiexec`` for CPU training (mpi4py, ``pip install "minires[dist]"``),
- ``"nccl"`` under ``mpiexec`` for ``device="cuda"`` (NCCL through CuPy, started over MPI).

Under ``"mpi"``, the ranks sharing a machine split its cores between them
(:func:`minires.distributed.cores.share_cores`). With more than one process, :func:`init` also installs
an exception hook: an uncaught exception on one rank prints that rank's traceback and aborts the whole
group (``MPI_Abort``), so the other ranks never wait forever in a collective the failed rank will not reach.
"""

from __future__ import annotations

import sys
import traceback
from types import TracebackType
from typing import Any

from minires.backend import parse_device
from minires.distributed.comm import Communicator, SingleCommunicator
from minires.distributed.cores import share_cores
from minires.distributed.launch import launched_by_mpi, launched_world_size

BACKENDS = ("auto", "single", "mpi", "nccl")
DIST_INSTALL_HINT = 'install the "dist" extra: pip install "minires[dist]" (mpi4py and the MPICH wheel)'

_world: Communicator | None = None


def _mpi_communicator(backend: str) -> Communicator:
    try:
        import mpi4py  # noqa: F401 - only to give the install hint before MPI starts
    except ImportError:
        size = launched_world_size()
        why = f"this process was started by an MPI launcher ({size} processes)" if size else f"backend={backend!r} needs it"
        raise RuntimeError(f"minires.distributed: mpi4py is not installed, but {why}; {DIST_INSTALL_HINT}") from None
    if backend == "nccl":
        from minires.distributed.nccl import NCCLCommunicator

        return NCCLCommunicator()
    from minires.distributed.comm import MPICommunicator

    return MPICommunicator()


def init(backend: str = "auto", device: Any = "cpu", abort_on_error: bool = True) -> Communicator:
    """Start (once) and return this process's communicator; see the module docstring for the choice.

    Calling it again with the same (or "auto") backend returns the same communicator; asking for a
    different one is an error. ``abort_on_error=False`` leaves ``sys.excepthook`` alone."""
    global _world
    if backend not in BACKENDS:
        raise ValueError(f"init: unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend == "auto":
        if _world is not None:
            return _world
        backend = "single" if not launched_by_mpi() else ("nccl" if parse_device(device) == "cuda" else "mpi")
    if _world is not None:
        if _world.name != backend:
            raise RuntimeError(f"init: the process group is already initialised with backend {_world.name!r}, "
                               f"cannot switch to {backend!r}")
        return _world
    if backend == "single":
        size = launched_world_size()
        if size is not None and size > 1:
            raise RuntimeError(f"init: backend 'single' asked for, but mpiexec started {size} processes; "
                               "every one would train alone. Use backend 'auto', 'mpi' or 'nccl'")
        _world = SingleCommunicator()
    else:
        _world = _mpi_communicator(backend)
        if _world.name == "mpi":  # CPU ranks: each gets its share of the cores (see minires.distributed.cores)
            share_cores(_world.local_size)
    if abort_on_error and _world.size > 1:
        sys.excepthook = _abort_on_uncaught
    return _world


def is_initialized() -> bool:
    return _world is not None


def world() -> Communicator:
    """The communicator of :func:`init`; without ``init``, a one-process group — unless this process was
    started by ``mpiexec`` with several processes, where forgetting ``init`` would silently train each
    rank alone, so that is an error."""
    if _world is not None:
        return _world
    size = launched_world_size()
    if size is not None and size > 1:
        raise RuntimeError(f"minires.distributed: this process is one of {size} started by mpiexec, but "
                           "minires.distributed.init() was not called; call it first")
    return SingleCommunicator()


def get_rank() -> int:
    """This process's rank, 0..world_size-1 (0 when not distributed)."""
    return world().rank


def get_world_size() -> int:
    """How many processes train together (1 when not distributed)."""
    return world().size


def get_local_rank() -> int:
    """This process's rank among the processes on its own machine (which GPU it drives)."""
    return world().local_rank


def get_backend() -> str:
    """'single', 'mpi' or 'nccl'."""
    return world().name


def is_main_process() -> bool:
    """True on rank 0, the rank that prints and writes files."""
    return get_rank() == 0


def abort(code: int = 1) -> None:
    """End every process of the group now with exit code ``code``."""
    world().abort(code)


def destroy() -> None:
    """Forget the communicator (MPI itself is finalised by mpi4py when the process exits)."""
    global _world
    if _world is not None and sys.excepthook is _abort_on_uncaught:
        sys.excepthook = sys.__excepthook__
    _world = None


def _abort_on_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    """``sys.excepthook`` under several processes: this rank's traceback, then abort the whole group."""
    rank = _world.rank if _world is not None else "?"
    text = "".join(traceback.format_exception(kind, exc, tb))
    sys.stderr.write(f"[rank {rank}] uncaught {kind.__name__}; aborting all ranks\n{text}")
    sys.stderr.flush()
    if _world is not None:
        _world.abort(1)
