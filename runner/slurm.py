"""`--launcher slurm`: the same jobs submitted as SLURM jobs through submitit.

Each job runs `python <argv>` in the repository root on the allocated node (SLURM sets
CUDA_VISIBLE_DEVICES); the runner keeps the ledger, the dependencies and the tallies exactly as
for local slots. ``runner.slurm`` in the sweep file gives the executor's parameters; the
``cluster`` entry ('slurm', or 'local' to run the same path on this machine) picks the backend.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys

from runner.config import REPO_ROOT
from runner.scheduler import OUTPUT_NAME, Slot, open_job_output, shell_command
from runner.tasks import Job

logger = logging.getLogger(__name__)


def run_command(argv: list[str], output_path: str, python: str | None = None) -> int:
    """What a SLURM job executes: the training command, output appended to the job's output file."""
    with open(output_path, "a", buffering=1) as log:
        proc = subprocess.run([python or sys.executable, *argv], cwd=REPO_ROOT, stdout=log,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return proc.returncode


class _SubmititHandle:
    def __init__(self, job, log_file, command: str):
        self.job = job
        self.command = command
        self.external_id = str(job.job_id)
        log_file.close()

    def poll(self) -> int | None:
        if not self.job.done():
            return None
        try:
            return int(self.job.result())
        except Exception as e:  # the SLURM job itself failed (time limit, node failure, ...)
            logger.warning("SLURM job %s failed: %s", self.external_id, e)
            return -1

    def terminate(self) -> None:
        """scancel: SLURM sends SIGTERM, then SIGKILL after its KillWait."""
        try:
            self.job.cancel(check=False)
        except Exception as e:
            logger.warning("Could not cancel SLURM job %s: %s", self.external_id, e)

    def kill(self) -> None:
        self.terminate()


class SlurmLauncher:
    """Submit each job with submitit's executor (AutoExecutor; cluster='local' runs it here)."""

    def __init__(self, folder: str, params: dict, cluster: str | None = None):
        import submitit

        self.executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
        params = dict(params)
        additional = params.pop("additional", None) or {}
        # slurm_* keys are ignored by submitit's local backend, so the same dict serves both.
        self.executor.update_parameters(
            timeout_min=int(params.get("timeout_min", 60 * 24)),
            slurm_partition=params.get("partition") or None,
            gpus_per_node=int(params.get("gpus_per_node", 1)),
            cpus_per_task=int(params.get("cpus_per_task", 8)),
            mem_gb=params.get("mem_gb") or None,
            slurm_additional_parameters=additional,
        )

    def start(self, job: Job, slot: Slot, attempt: int, argv: list[str]):
        command = shell_command(sys.executable, argv, {})  # SLURM sets CUDA_VISIBLE_DEVICES on the node
        log = open_job_output(job, slot, attempt, command)
        self.executor.update_parameters(name=f"{job.task}-{job.dataset}-s{job.seed}")
        submitted = self.executor.submit(run_command, argv, os.path.join(job.output_dir, OUTPUT_NAME))
        logger.info("Submitted %s as SLURM job %s", job.output_dir, submitted.job_id)
        return _SubmititHandle(submitted, log, command)
