"""Start the multi-process test workers and end them cleanly.

:func:`launch` runs a worker module on two local processes with ``torch.distributed.run`` (gloo, CPU).
:func:`finish` ends a worker. gloo's worker threads can outlive interpreter finalisation: a rank
then aborts at exit with "terminate called without an active exception", after it has written its
results (about 1 run in 4 on a fresh machine; a barrier before exit did not help). So a worker
destroys its process group, flushes its streams and leaves with ``os._exit(0)``, skipping
finalisation altogether.
"""
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(module: str, out_dir: Path, *args: str, nproc: int = 2, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run ``python -m module out_dir *args`` on ``nproc`` gloo processes from the repository root."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", module, str(out_dir), *args]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def finish() -> NoReturn:
    """Destroy the process group, flush, and exit at once (see the module docstring)."""
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
