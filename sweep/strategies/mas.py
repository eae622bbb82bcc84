"""mas: memory aware synapses (Aljundi et al. 2018), penalty λ · Σ_k Ω_k (θ_k − θ*_k)².

A weight's importance is how much the network's output moves when it moves, measured without labels:

    Ω_task = 1/N Σ_i | ∂ ||f(x_i)||²₂ / ∂θ |

over the task's N training samples (or ``mas_samples`` of them, drawn from a generator of the strategy's own),
**per sample**, as the paper defines it: the absolute value is taken of each sample's gradient, then averaged.
(Hsu et al.'s code takes it of each batch's gradient of the batch mean over samples and outputs instead: smaller,
and its λ lives on another scale.) f(x) is the model's output vector, unmasked logits: in task-incremental form
the task's own classes only (the head the task is evaluated with, as Hsu et al.'s multi-head code uses), in
class- and domain-incremental form every output (the single head the model predicts with), but with
``class_outputs: seen`` the classes seen so far (the outputs the task is scored over). The model runs in
eval mode (dropout off, batch-norm statistics fixed), so samples do not mix.

Over tasks Ω accumulates as a sum, Ω ← Ω + Ω_task, as in Aljundi et al.'s code and Hsu et al.'s (one importance
and one θ*); θ* = the weights after the latest task; the penalty is λ · Σ Ω (θ − θ*)² (no factor 1/2, as the
paper and both codes). The estimate costs one forward and one backward pass per sample, counted in
``compute.fisher_samples`` (the work of an importance estimate, EWC's Fisher's column). It is skipped after the
last task: no task follows to be penalised with it.

λ = 0 returns no penalty, so it reproduces naive bit for bit: the estimate runs after the task, draws from its own
generator and leaves the weights as they were (the state after task 1 never depends on λ).

Per-sample gradients without a per-sample loop: for an ``nn.Linear`` on (B, features) the per-sample gradient
is δ_i a_iᵀ, so Σ_i |δ_i a_iᵀ| = |δ|ᵀ|a|, one matmul (δ the gradient of the objective at the layer's output,
a its input); any other parametrised module (convolutions, a user's layers) goes through ``torch.func``
(vmap over grad), in chunks of bounded size.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from sweep.data.tasks import to_float
from sweep.hparams import DEFAULTS
from sweep.strategies.base import TaskContext
from sweep.strategies.fisher import ACTIVATION_BUDGET, MAX_CHUNK, MAX_PER_SAMPLE_ELEMENTS, estimating
from sweep.strategies.per_sample import capture, intact, rule_layers
from sweep.strategies.si import ImportancePenalty, importance_stats


class MAS(ImportancePenalty):
    name = "mas"

    def __init__(self, mas_lambda: float = DEFAULTS["mas_lambda"], mas_samples: int | None = DEFAULTS["mas_samples"]
                 ) -> None:
        super().__init__()
        self.mas_lambda = mas_lambda
        self.mas_samples = mas_samples

    def after_task(self, ctx: TaskContext) -> None:
        if ctx.task_index == ctx.benchmark.num_tasks - 1:
            return  # no task follows: this importance would never be multiplied by λ
        data = ctx.task_training_data()
        n = len(data.split)
        x = data.split.x
        if self.mas_samples is not None and self.mas_samples < n:
            # a stream of its own: drawing the subset never shifts the run's batches (λ = 0 stays naive)
            seed = (ctx.generator.initial_seed() * 1_000_003 + 104_729 + ctx.task_index) % 2**63
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: self.mas_samples]
            x, n = x[order.to(x.device)], self.mas_samples
        # the norm covers the outputs the task is scored over: task-incremental, the task's classes; class-
        # incremental with class_outputs seen, the classes so far; otherwise every output
        masks = ctx.benchmark.task_masks(ctx.device)
        scored = masks[ctx.task_index] if masks is not None else ctx.outputs
        columns = None if scored is None else scored.nonzero().flatten()
        importance = mas_importance(ctx.model, x, columns)
        ctx.compute.fisher_samples += n
        self.consolidate(importance, ctx.model)

    @property
    def strength(self) -> float:
        return self.mas_lambda

    def stats(self) -> dict[str, float]:
        return importance_stats("mas", self.omega)


def mas_importance(model: nn.Module, x: Tensor, columns: Tensor | None = None, chunk_size: int | None = None
                   ) -> dict[str, Tensor]:
    """1/N Σ_i |∂ ||f(x_i)[columns]||² / ∂θ| for every parameter of ``model`` (frozen ones too), name -> tensor.

    Args:
        model: the network; put in eval mode with gradients for the call, then restored.
        x: (N, ...) inputs; uint8 images are scaled to [0, 1], float inputs are used as they are.
        columns: the outputs f's norm covers (a task's classes); None: every output.
        chunk_size: samples per forward pass; None: as many as keep the layer outputs within
            ``ACTIVATION_BUDGET`` elements, at most ``MAX_CHUNK``.
    """
    n = int(x.shape[0])
    if n == 0:
        raise ValueError("cannot estimate MAS's importance from zero samples")
    named = dict(model.named_parameters())
    total = {name: torch.zeros_like(p) for name, p in named.items()}
    names_of = {id(p): name for name, p in named.items()}
    layers: list[nn.Module] = [m for m in rule_layers(model) if isinstance(m, nn.Linear)]
    start, size = 0, chunk_size or 64  # without a chunk size, the first chunk measures the layer outputs
    with estimating(model):
        while start < n:
            stop = min(start + size, n)
            xc = x[start:stop]
            xc = to_float(xc) if xc.dtype == torch.uint8 else xc
            captured: dict[nn.Module, list[tuple[Tensor, Tensor, int, int]]] = {}
            with capture(layers, captured):
                out = model(xc)  # (B, outputs)
            if chunk_size is None:
                per_sample = sum(call[1].numel() for calls in captured.values() for call in calls) // (stop - start)
                size = max(64, min(MAX_CHUNK, ACTIVATION_BUDGET // max(1, per_sample)))
            # the rule: a Linear called once on (B, features), its input and output not changed in place since
            handled = [m for m in layers if intact(captured.get(m, [])) and captured[m][0][0].dim() == 2]
            handled_ids = {id(p) for m in handled for p in m.parameters(recurse=False)}
            seed = torch.zeros_like(out)  # ∂ Σ_i ||f_i[columns]||² / ∂ f = 2 f on the columns, 0 elsewhere
            if columns is None:
                seed = 2 * out.detach()
            else:
                seed[:, columns] = 2 * out.detach()[:, columns]
            if handled:
                deltas = torch.autograd.grad(out, [captured[m][0][1] for m in handled], seed, allow_unused=True)
                for m, delta in zip(handled, deltas):
                    if delta is None:
                        continue  # the layer ran but does not reach the outputs
                    a = captured[m][0][0]
                    total[names_of[id(m.weight)]] += delta.abs().T @ a.abs()  # Σ_i |δ_i| |a_i|ᵀ
                    if m.bias is not None:
                        total[names_of[id(m.bias)]] += delta.abs().sum(0)
            rest = [name for name, p in named.items() if id(p) not in handled_ids]
            if rest:
                for name, value in _fallback(model, rest, xc.detach(), columns).items():
                    total[name] += value
            start = stop
    return {name: t / n for name, t in total.items()}


def _fallback(model: nn.Module, names: list[str], x: Tensor, columns: Tensor | None) -> dict[str, Tensor]:
    """Σ_i |∂ ||f(x_i)[columns]||² / ∂θ| for the parameters ``names``, by vmap over grad, in chunks."""
    params = dict(model.named_parameters())
    sub = {name: params[name].detach() for name in names}

    def objective(theta: dict[str, Tensor], xi: Tensor) -> Tensor:
        out = functional_call(model, theta, (xi[None],))[0]
        return (out if columns is None else out[columns]).square().sum()

    per_sample = vmap(grad(objective), in_dims=(None, 0))
    step = max(1, MAX_PER_SAMPLE_ELEMENTS // max(1, sum(v.numel() for v in sub.values())))
    total = {name: torch.zeros_like(v) for name, v in sub.items()}
    for s in range(0, x.shape[0], step):
        with torch.no_grad():  # the other parameters require grad: without this, the sum would carry a graph
            grads = per_sample(sub, x[s : s + step])
        for name, g in grads.items():
            total[name] += g.detach().abs().sum(0)
    return total
