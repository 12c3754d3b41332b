"""Run under torchrun: only rank 0 reads the drawn seed, then both ranks broadcast
something else (as OptunaPlugin.suggest does); seeds and the broadcast value must agree.

Usage: torchrun --nproc_per_node=2 ddp_seed.py OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from helios import Trainer, distributed
from tests.helios_tests.boring import BoringData, BoringModel


def main(out_dir: Path) -> None:
    trainer = Trainer(total_steps=1, device="cpu")  # no seed: one is drawn
    if trainer.rank == 0:
        first_read = trainer.seed  # rank 1 does not read it here
    lr = distributed.broadcast_object(0.05 if trainer.rank == 0 else 0.0)
    trainer.fit(BoringModel(lr=lr), BoringData())
    result = {
        "seed": trainer.seed,
        "first_read": first_read if trainer.rank == 0 else None,
        "lr": lr,
    }
    (out_dir / f"rank{trainer.rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
