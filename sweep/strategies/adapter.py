"""adapter: low-rank adapters (LoRA) on the base model from task 2 on (:mod:`sweep.strategies.lora`).

Task 1 trains the whole model. From task 2 on the base is frozen (every layer but the head, with its
BatchNorm statistics held, as ``frozen_layers`` freezes) and each Linear/Conv2d of the
``adapter_layers`` trains a fresh adapter ``(α/r)·B A``, B zero at the start, A drawn from the run's
generator. The head trains fully unless it is itself one of ``adapter_layers``: a low-rank update with
a frozen bias cannot give a class-incremental task's new classes rows of their own (their biases were
pushed down on task 1), and a full head is what LoRA fine-tuning of a classifier usually keeps (PEFT's
``modules_to_save``); it is small (classes × features).

- ``merge``: after each task the adapter is folded into the weights (``W ← W + (α/r)·B A``): one model,
  forgetting bounded by the rank and the learning rate. It merges before any other component's
  ``after_task``, so EWC's Fisher and anchors and distillation's teacher see the merged weights.
- ``per-task``: each task keeps its adapter and its head. Task-incremental evaluation runs task i with
  its own adapter and head (task 1: the base with its head), so an old task cannot be forgotten.
  Class- and domain-incremental evaluation does not know the task: each sample is routed to the task
  whose adapter and head give the most confident prediction (the largest softmax probability), among
  the tasks trained so far; that costs one forward pass per task, counted in the evaluation compute.

``adapter_rank = 0`` adds no adapter and freezes nothing: plain fine-tuning. ``stats()`` reports the
parameters each task from task 2 on trains (adapters and head), ``trainable_params``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call

from sweep.hparams import DEFAULTS
from sweep.models import named_layers
from sweep.strategies.base import Compute, Strategy, TaskContext, tensors_under
from sweep.strategies.lora import LoRA, add_loras, attach, layer_modules, lora_of, merge, resolve_layers


class Adapter(Strategy):
    name = "adapter"
    # merged first: before interpolation (which then moves part of the way to the merged weights, whatever the
    # order of the names) and before EWC's Fisher and distillation's teacher look at the weights
    after_task_order = -2

    def __init__(self, adapter_rank: int = DEFAULTS["adapter_rank"], adapter_alpha: float = DEFAULTS["adapter_alpha"],
                 adapter_layers: str = DEFAULTS["adapter_layers"],
                 adapter_mode: str = DEFAULTS["adapter_mode"]) -> None:
        self.rank, self.alpha, self.layers, self.mode = adapter_rank, adapter_alpha, adapter_layers, adapter_mode
        self.adapters: dict[int, dict[str, LoRA]] = {}  # task -> module name -> adapter (merge: the live one only)
        self.heads: dict[int, dict[str, Tensor]] = {}  # per-task: task -> the head's parameters after it
        self.modules: dict[str, nn.Module] = {}  # the adapted modules of the model, by name
        self.head_names: list[str] = []  # the head's parameter names, when the head trains fully
        self.body = 0  # layers frozen from task 2 on: every one but the head
        self.trained = 0  # parameters a task from task 2 on trains (adapters and head)

    def active(self, task_index: int) -> bool:
        return self.rank > 0 and task_index >= 1

    def before_task(self, ctx: TaskContext) -> None:
        t, model = ctx.task_index, ctx.model
        layers = named_layers(model)
        self.body = len(layers) - 1
        chosen = resolve_layers(model, self.layers) if self.rank > 0 else []  # a bad layer refused before task 1
        if not self.active(t):
            return
        self.modules = layer_modules(model, chosen)
        head_trains = self.body not in chosen
        prefix = {id(m): name for name, m in model.named_modules()}[id(layers[-1][1])]
        names = [f"{prefix}.{n}" if prefix else n for n, _ in layers[-1][1].named_parameters()]
        self.head_names = names if head_trains else []
        if self.mode == "per-task" and self.head_names:
            params = dict(model.named_parameters())  # the head as the previous task left it
            self.heads[t - 1] = {n: params[n].detach().clone() for n in self.head_names}
        self.adapters[t] = add_loras(self.modules, self.rank, self.alpha, ctx.generator)

    def frozen_layers(self, task_index: int) -> int:
        return self.body if self.active(task_index) else 0

    def trainable_parameters(self, ctx: TaskContext, params: list[nn.Parameter]) -> list[nn.Parameter]:
        if not self.active(ctx.task_index):
            self.trained = sum(p.numel() for p in params)
            return params
        own = {id(p) for p in named_layers(ctx.model)[-1][1].parameters()} if self.head_names else set()
        head = [p for p in params if id(p) in own]  # of the layers left unfrozen, the head
        chosen = head + [p for lora in self.adapters[ctx.task_index].values() for p in lora.parameters()]
        self.trained = sum(p.numel() for p in chosen)
        return chosen

    def after_task(self, ctx: TaskContext) -> None:
        if self.active(ctx.task_index) and self.mode == "merge":
            merge(ctx.model)
            self.adapters.clear()

    def eval_model(self, ctx: TaskContext, task_index: int) -> nn.Module:
        t = ctx.task_index
        if self.mode != "per-task" or not self.active(t):
            return ctx.model
        if ctx.benchmark.scenario == "task":
            return TaskModel(self, ctx.model, task_index) if task_index < t else ctx.model
        return Routed(self, ctx.model, t + 1, ctx.compute)

    def forward_as(self, model: nn.Module, task_index: int, x: Tensor) -> Tensor:
        """``model(x)`` with task ``task_index``'s adapters and head (task 1: the base alone); the live
        adapters are put back afterwards."""
        live = {name: lora_of(m) for name, m in self.modules.items()}
        own = self.adapters.get(task_index, {})
        try:
            for name, m in self.modules.items():
                attach(m, own.get(name))
            head = self.heads.get(task_index)
            return model(x) if head is None else functional_call(model, head, (x,))
        finally:
            for name, m in self.modules.items():
                attach(m, live[name])

    def stats(self) -> dict[str, float]:
        return {"trainable_params": float(self.trained)}

    def state_dict(self) -> dict[str, Tensor | float | int]:
        state: dict[str, Tensor | float | int] = {"trained": self.trained}
        for t, loras in self.adapters.items():
            for name, lora in loras.items():
                state[f"adapter{t}.{name}.A"], state[f"adapter{t}.{name}.B"] = lora.A.detach(), lora.B.detach()
        for t, head in self.heads.items():
            state.update({f"head{t}.{name}": value for name, value in head.items()})
        return state

    def load_state_dict(self, state: dict[str, Tensor | float | int]) -> None:
        self.trained = int(state.get("trained", 0))
        tasks = {key.split(".", 1)[0] for key in state if key.startswith(("adapter", "head"))}
        self.adapters, self.heads = {}, {}
        for task in sorted(tasks):
            if task.startswith("head"):
                self.heads[int(task.removeprefix("head"))] = tensors_under(state, f"{task}.")
                continue
            weights = tensors_under(state, f"{task}.")
            names = {key.rsplit(".", 1)[0] for key in weights}
            self.adapters[int(task.removeprefix("adapter"))] = {
                name: LoRA(nn.Parameter(weights[f"{name}.A"].clone()), nn.Parameter(weights[f"{name}.B"].clone()),
                           self.alpha / self.rank) for name in sorted(names)}


class TaskModel(nn.Module):
    """The model as task ``task_index`` trained it: its own adapters and head (per-task, task-incremental)."""

    def __init__(self, strategy: Adapter, model: nn.Module, task_index: int) -> None:
        super().__init__()
        self.strategy, self.task_index = strategy, task_index
        self.__dict__["base"] = model  # not a submodule: its weights are the run's, not this view's
        self.training = model.training

    def forward(self, x: Tensor) -> Tensor:
        return self.strategy.forward_as(self.__dict__["base"], self.task_index, x)

    def train(self, mode: bool = True) -> TaskModel:
        self.__dict__["base"].train(mode)
        return super().train(mode)


class Routed(TaskModel):
    """Each sample through the task whose adapter and head are most confident on it (largest softmax
    probability), among the first ``tasks``: per-task adapters when the task is unknown (class, domain)."""

    def __init__(self, strategy: Adapter, model: nn.Module, tasks: int, compute: Compute) -> None:
        super().__init__(strategy, model, tasks - 1)
        self.tasks, self.compute = tasks, compute

    def forward(self, x: Tensor) -> Tensor:
        base = self.__dict__["base"]
        live = self.tasks - 1  # the task being (or last) trained: the model as it is
        logits = [base(x) if k == live else self.strategy.forward_as(base, k, x) for k in range(self.tasks)]
        self.compute.eval_samples += (self.tasks - 1) * x.shape[0]  # the trainer counts one pass
        stack = torch.stack(logits)  # (tasks, B, classes)
        confidence = stack.softmax(dim=-1).amax(dim=-1)  # (tasks, B)
        chosen = confidence.argmax(dim=0)  # (B,)
        return stack.gather(0, chosen.view(1, -1, 1).expand(1, *stack.shape[1:])).squeeze(0)
