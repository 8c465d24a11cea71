"""One process of ``test_multiseed.py``'s two-process run on localhost (``jax.distributed``).

Usage: ``distributed_worker.py PROCESS_ID NUM_PROCESSES PORT OUT_DIR``. Each process has two
host CPU devices; the experiment's command line runs seeds 0-3 over all four.
"""

from __future__ import annotations

import sys

from conftest import TINY, synthetic_dataset

from experiments.common import main

if __name__ == "__main__":
    process_id, processes, port, out = sys.argv[1:5]
    data = synthetic_dataset()
    main("synthetic", "synthetic", "distributed test", TINY, argv=[
        "--seeds", "0-3", "--out", out, "--distributed",
        "--coordinator-address", f"localhost:{port}",
        "--num-processes", processes, "--process-id", process_id,
    ], load=lambda data_dir, quiet: data)
