"""How the processes of one `accelerate launch` find each other; shared by generate-dataset and the trainers.

On a machine without CUDA, accelerate (1.15) starts several processes in two ways:
`accelerate launch --multi_gpu --num_processes N` (torchrun underneath; with no GPU each process
runs on the CPU and DDP uses the gloo backend) or `accelerate launch --cpu --mpirun_hostfile FILE
--num_processes N` (MPI). A plain `accelerate launch --cpu --num_processes N` starts ONE process
and only sets MASTER_ADDR, so a user would silently get one process doing all the work;
`check_launch` turns that into an error naming the commands that do start N processes.
"""
from __future__ import annotations

import os
from typing import Mapping

# Environment variables by which torchrun, MPI and accelerate's launchers announce the world size.
WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


class LaunchError(RuntimeError):
    """A launch that would not start the processes the user asked for."""


def check_launch(env: Mapping[str, str] | None = None) -> None:
    """LaunchError when `accelerate launch --cpu --num_processes N>1` started a single process (see the module docstring)."""
    env = os.environ if env is None else env
    cpu_launch = env.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    asked_for_several = "MASTER_ADDR" in env  # accelerate's simple launcher sets it only for num_processes > 1
    started_several = any(int(env.get(name, "1") or 1) > 1 for name in WORLD_SIZE_VARIABLES)
    if cpu_launch and asked_for_several and not started_several:
        raise LaunchError(
            "`accelerate launch --cpu --num_processes N` starts one process unless it is given --mpirun_hostfile; "
            "for N CPU processes on one machine run `accelerate launch --multi_gpu --num_processes N -m xray_generator ...` "
            "(without CUDA each process runs on the CPU, gloo backend) or `torchrun --nproc_per_node N -m xray_generator ...`"
        )


def local_process_count(env: Mapping[str, str] | None = None) -> int:
    """Processes of this launch on this machine (they share its cores)."""
    env = os.environ if env is None else env
    for name in ("LOCAL_WORLD_SIZE", "MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE"):
        if env.get(name, "").isdigit():
            return max(1, int(env[name]))
    return 1
