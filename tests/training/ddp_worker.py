"""One ``torchrun`` process of the distributed-training test (test_devices.py); not a test module itself.

Trains a tiny DefectNet with :func:`train_defect_net`, keeping a reference to the network it trains, and
writes what this rank ended with to ``<out>/rank<r>.json``: a hash of the trained weights, the result's
world size and device, and the files in the checkpoint folder.

Usage: torchrun --standalone --nproc_per_node=2 ddp_worker.py OUT_DIR MEMBERS
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch
from test_defectnet import tiny_pool  # run as a script: its own folder is on sys.path

from qcstation.training import defectnet
from qcstation.training.backbones import BackboneDefectNet
from qcstation.training.defectnet import DefectTrainConfig, Pool, train_defect_net
from qcstation.training.devices import Distributed, end_process


def pool(n: int, seed: int) -> Pool:
    """``n`` 32 px tiles, every other one with a dark square defect (test_defectnet's tiny pool)."""
    return tiny_pool(n, 32, seed)


def digest(net: torch.nn.Module) -> str:
    return hashlib.sha256(b"".join(p.detach().cpu().numpy().tobytes() for p in net.parameters())).hexdigest()


def main() -> None:
    out, members = Path(sys.argv[1]), int(sys.argv[2])
    trained: list[torch.nn.Module] = []
    initial: list[str] = []
    new_net = defectnet._new_net

    def spy(config: DefectTrainConfig, *, pretrained: bool) -> defectnet.DefectNet | BackboneDefectNet:
        net = new_net(config, pretrained=pretrained)
        trained.append(net)
        initial.append(digest(net))
        return net

    defectnet._new_net = spy  # the first network built in each member is the one trained
    config = DefectTrainConfig(
        classes=("good", "defect"), width=8, depth=2, size=32, batch_size=4, max_epochs=2, members=members
    )
    fit = train_defect_net(pool(32, 0), pool(8, 1), config, out / "ckpt")
    Distributed.from_env().finish()  # as a script of one's own should: the ranks leave together
    rank = int(os.environ["RANK"])
    (out / f"rank{rank}.json").write_text(
        json.dumps(
            {
                "weights_sha": digest(trained[0]),
                "initial_sha": initial[0],
                "world_size": fit.world_size,
                "device": fit.device,
                "members": len(fit.members),
                "epochs_run": fit.epochs_run,
                "left_group": not torch.distributed.is_initialized(),
            }
        )
    )


if __name__ == "__main__":
    main()
    end_process(0)  # as `qcstation` does under torchrun: no C++ teardown to abort in
