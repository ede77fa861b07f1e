"""Start a test module's ``worker`` as the ranks of a CPU (gloo) job, with Lightning's launch variables."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(module: str, out: Path, world: int, timeout_s: float) -> list[subprocess.CompletedProcess]:
    """Run ``python -m MODULE RANK OUT`` once per rank, as torchrun or SLURM would start them; kill every rank
    if one outlives ``timeout_s``."""
    port = str(free_port())
    procs = []
    for rank in range(world):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "NODE_RANK": "0", "LOCAL_RANK": str(rank),
               "WORLD_SIZE": str(world), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
        env.pop("PYTEST_XDIST_WORKER", None)
        procs.append(subprocess.Popen([sys.executable, "-m", module, str(rank), str(out)], cwd=REPO, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    results = []
    for proc in procs:
        try:
            stdout, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail(f"{module}: a DDP worker timed out after {timeout_s} s")
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout))
    return results
