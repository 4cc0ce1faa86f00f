"""Was this process started by an MPI launcher (``mpiexec``/``mpirun``/``srun``)? Read from the environment
the launchers set, without importing mpi4py, so a plain ``python train.py`` never needs MPI installed."""

from __future__ import annotations

import os

# (launcher, variable holding the world size) — MPICH/Intel MPI (Hydra's PMI), Open MPI, PMIx, Slurm.
_SIZE_VARIABLES = (
    ("MPICH / Intel MPI", "PMI_SIZE"),
    ("Open MPI", "OMPI_COMM_WORLD_SIZE"),
    ("PMIx", "PMIX_SIZE"),
    ("Slurm", "SLURM_NTASKS"),
)
_RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")


def launched_world_size() -> int | None:
    """The number of processes the MPI launcher started, or None when not started by one.

    Slurm's ``SLURM_NTASKS`` counts only when a rank variable is set too (``srun --mpi=pmi2/pmix``),
    so a plain ``sbatch`` job running one Python process stays single-process."""
    has_rank = any(v in os.environ for v in _RANK_VARIABLES)
    for _launcher, variable in _SIZE_VARIABLES:
        value = os.environ.get(variable)
        if value is None or (variable == "SLURM_NTASKS" and not has_rank):
            continue
        try:
            return int(value)
        except ValueError:
            continue
    return 1 if has_rank else None


def launched_by_mpi() -> bool:
    """True when an MPI launcher started this process (even with one process: ``mpiexec -n 1``)."""
    return launched_world_size() is not None
