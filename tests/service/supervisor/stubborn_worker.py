"""A worker process stuck where SIGTERM cannot end it (a hung CUDA or NCCL call, say): it
says it is ready, notes each SIGTERM in the data directory and runs on until SIGKILL.

Usage (as a launcher's worker command): stubborn_worker.py --study S --worker-id N
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path


def main() -> None:
    worker_id = sys.argv[sys.argv.index("--worker-id") + 1]
    data_dir = Path(os.environ["HELIOS_HPO_DATA_DIR"])
    noted = data_dir / f"sigterm-{worker_id}"
    signal.signal(signal.SIGTERM, lambda *_: noted.touch())
    (data_dir / f"ready-{worker_id}").touch()
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main()
