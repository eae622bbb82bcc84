"""lpft: linear probing, then fine-tuning (LP-FT, Kumar et al. 2022), on every task from task 2 on.

Each task from task 2 on opens with ``lp_epochs`` epochs that train only the head (the last layer of
``named_layers``), the body held fixed, so that the head fits the new task before any feature moves;
then the task's ``epochs`` fine-tune every layer not frozen (``frozen_layers`` stays frozen in both).
The probing epochs come on top of ``epochs``, so ``lp_epochs=0`` is naive fine-tuning bit for bit and a
front compares LP-FT with fine-tuning of the same length plus a cheap probe (head-only steps cost a
backward pass through the head alone). Each phase gets a fresh optimizer (the trainer's rule). Task 1
trains as usual: there is nothing to protect yet.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from sweep.hparams import DEFAULTS
from sweep.models import named_layers
from sweep.strategies.base import WHOLE_TASK, Phase, Strategy


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The head's parameters: those of the model's last layer (``named_layers``), what a linear probe trains."""
    return list(named_layers(model)[-1][1].parameters())


class LPFT(Strategy):
    name = "lpft"

    def __init__(self, lp_epochs: int = DEFAULTS["lp_epochs"]) -> None:
        self.lp_epochs = lp_epochs

    def phases(self, task_index: int) -> Sequence[Phase]:
        if task_index == 0 or self.lp_epochs == 0:
            return WHOLE_TASK
        return Phase("probe", self.lp_epochs, head_parameters), Phase("tune")
