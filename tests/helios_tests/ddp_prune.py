"""Run under torchrun: rank 0 owns an Optuna trial whose pruner stops both ranks.

Usage: torchrun --nproc_per_node=2 ddp_prune.py STORAGE_URL OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import optuna
from torch.nn.parallel import DistributedDataParallel

from helios import Trainer
from helios.plugins.optuna import OptunaPlugin
from tests.helios_tests.boring import BoringData, BoringModel


class PruneFromStep(optuna.pruners.BasePruner):
    """Prunes once the trial has reported ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return trial.last_step is not None and trial.last_step >= self.step


class DDPModel(BoringModel):
    def setup(self) -> None:
        super().setup()
        self.net = DistributedDataParallel(self.net)  # type: ignore[assignment]
        self.optimizers = [self.optimizer]


def main(storage: str, out_dir: Path) -> None:
    trainer = Trainer(total_steps=10, seed=3, device="cpu")
    trial = None
    if trainer.rank == 0:
        study = optuna.create_study(
            storage=storage, study_name="ddp", direction="maximize", pruner=PruneFromStep(1)
        )
        trial = study.ask()
    plugin = OptunaPlugin(trial, "accuracy")
    plugin.configure_trainer(trainer)
    lr = plugin.suggest("float", "lr", low=0.01, high=0.1)
    model = DDPModel(lr=lr)
    plugin.configure_model(model)  # as helios-ml's users do
    try:
        trainer.fit(model, BoringData())  # raises TrialPruned on every rank when pruned
        pruned = False
    except optuna.TrialPruned:
        pruned = True
    state = trainer.state
    if trial is not None:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED if pruned else None)
    result = {
        "rank": trainer.rank,
        "world_size": trainer.world_size,
        "lr": lr,
        "epochs": state.global_epoch,
        "cycles": state.validation_cycles,
        "batches": state.global_iteration,
        "pruned": pruned,
        "save_name": model.save_name,
    }
    (out_dir / f"rank{trainer.rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
