"""Run on 2 CPU ranks by test_resume.py: every rank's RNG state comes back from a checkpoint, and a non-finite loss
on one rank makes every rank skip the update.

    torchrun --standalone --nproc_per_node 2 tests/training/ddp_checkpoint_check.py <folder>
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from magicbokeh.training.checkpointing import Checkpoints, TrainingProgress, WeightsFile
from magicbokeh.training.optim import guarded_update

accelerator = Accelerator(cpu=True)
rank = accelerator.process_index
torch.manual_seed(100 + rank)  # each rank's global RNG in its own state
model = torch.nn.Linear(2, 1)
model, optimizer = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
module = accelerator.unwrap_model(model)
checkpoints = Checkpoints(
    accelerator, Path(sys.argv[1]), 1,
    weights=[WeightsFile("model", module, module.state_dict, module.load_state_dict)],
    states={"progress": TrainingProgress()}, optimizers=["sgd"],
)  # fmt: skip
path = checkpoints.save(1)
expected = torch.rand(4)  # this rank's next draws after the checkpoint
torch.manual_seed(0)
checkpoints.load(path)
got = torch.rand(4)
assert torch.equal(got, expected), (rank, got, expected)

# Gradients are finite everywhere; only rank 1's loss is not: the rank-averaged loss makes both ranks skip.
loss = model(torch.ones(3, 2)).square().mean()
accelerator.backward(loss)
before = [p.detach().clone() for p in model.parameters()]
update = guarded_update(optimizer, list(model.parameters()), loss + (math.inf if rank == 1 else 0.0), 1.0, accelerator)
assert not update.applied and math.isfinite(update.grad_norm), (rank, update)
assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
print(f"rank {rank}: RNG restored, non-finite update skipped", flush=True)
accelerator.end_training()
