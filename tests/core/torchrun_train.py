"""Run by tests/core/test_torchrun.py as ``torchrun --standalone --nproc_per_node 2
tests/core/torchrun_train.py OUT``: the launcher starts the processes (gloo on
CPU) and ``train()`` joins their run, as it does inside ``kedro run`` under
torchrun (docs/DISTRIBUTED.md). Rank 0 saves the result to OUT/result.pt."""

import os
import sys
from pathlib import Path

import torch

from diffusion_transfer.core.methods import DenoisingLoss
from diffusion_transfer.core.training import train
from tests.core.test_distributed import SCHED, cfg, data, unet


def main(out: Path) -> None:
    torch.set_num_threads(1)
    result = train(unet(), DenoisingLoss(SCHED), data(), cfg(), checkpoint_dir=out / "checkpoints", progress=False)
    if int(os.environ["RANK"]) == 0:
        torch.save({"model": result.model.state_dict(), "ema": result.ema_model.state_dict(),
                    "history": result.history, "world_size": int(os.environ["WORLD_SIZE"])}, out / "result.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
