"""genreplay: deep generative replay with distillation (DGR+distill, van de Ven & Tolias 2019).

One unconditional VAE (an MLP: input, two hidden layers of 400, a Gaussian latent of ``genreplay_latent``)
models every task seen so far. Unconditional, as in DGR: the labels of replayed samples come from the
previous classifier, so the generator needs none, and one generator serves the three scenarios alike (a
class-conditional one could not give the task of a task-incremental sample, nor a domain's).

- While task t trains, each batch of B real samples gets round(B·r/(1 − r)) samples drawn from the
  generator as it was after task t−1 (r = ``genreplay_ratio``). The loss is (1 − r)·CE(real) +
  r·T²·KL(p_prev ‖ p) on the generated ones (T = ``genreplay_temperature``): each part weighted by its
  share of the batch, as replay's concatenated batch weights it; ``genreplay_weighting=task-count``
  weights them 1/t and 1 − 1/t instead, as DGR does. p_prev is the softmax at T of the classifier as it
  was after task t−1 over the classes of tasks < t, padded with 0 for the new task's classes; p is the
  model's over every class seen so far (van de Ven & Tolias's targets: replayed digits also teach that
  they are none of the new classes). Domain-incremental: every class, both. Task-incremental: each
  generated sample answers one past task drawn uniformly (the expectation of van de Ven's mean over the
  past heads), both softmaxes over that task's classes.
- The generator learns the new task while the classifier does: the trainer steps it
  (:class:`~sweep.strategies.base.Auxiliary`) on each batch's real samples plus the same generated ones,
  so it keeps the old tasks by replaying its own samples (one generator, not one per task). After each
  task but the last, ``genreplay_epochs`` more epochs train it alone, the same way: a VAE needs far more
  steps than a classifier (van de Ven trains both 2000 iterations a task). The last task trains no
  generator: nothing would use it.
- Compute: ``train_samples`` also counts every sample through the generator's training (forward and
  backward) and every generated sample through the classifier; ``optimizer_steps`` counts every generator
  step (the trainer counts the one beside each classifier step, this strategy its extra epochs' steps).
  Forward-only passes (the previous classifier's labels, the previous generator's decoding) are not
  counted, as distillation's teacher is not.

The generator is a model of the training data: it lives in this object only. It is never in
:meth:`state_dict` (which is empty), so it never reaches the task-prefix cache, a checkpoint or Ray's
object store; genreplay trials therefore do not use the prefix cache (``prefix_cacheable``) and train
task 1 again. Its randomness (initial weights, latent noise, task ids) comes from a generator of its own,
seeded from the run's seed, so r = 0 trains it but leaves the classifier's run exactly naive.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sweep.data.tasks import to_float
from sweep.errors import ConfigError
from sweep.hparams import DEFAULTS
from sweep.models.vae import VAE
from sweep.strategies.base import NO_FEATURES, Auxiliary, Batch, Features, Strategy, TaskContext
from sweep.strategies.distill import frozen_copy


class GenReplay(Strategy):
    name = "genreplay"
    prefix_cacheable = False  # the generator is state after task 1 that must never be written anywhere

    def __init__(self, genreplay_latent: int = DEFAULTS["genreplay_latent"],
                 genreplay_epochs: int = DEFAULTS["genreplay_epochs"],
                 genreplay_ratio: float = DEFAULTS["genreplay_ratio"],
                 genreplay_temperature: float = DEFAULTS["genreplay_temperature"],
                 genreplay_weighting: str = DEFAULTS["genreplay_weighting"],
                 genreplay_targets: str = DEFAULTS["genreplay_targets"]) -> None:
        self.latent, self.epochs, self.targets = genreplay_latent, genreplay_epochs, genreplay_targets
        self.ratio, self.temperature, self.weighting = genreplay_ratio, genreplay_temperature, genreplay_weighting
        self.vae: VAE | None = None  # trains during each task
        self.previous_vae: VAE | None = None  # frozen after the previous task: what is replayed
        self.teacher: nn.Module | None = None  # the classifier after the previous task: labels the replay
        self.known: Tensor | None = None  # (1, classes) bool: classes of the past tasks (class, domain)
        self.answered: Tensor | None = None  # (1, classes) bool: classes of the tasks so far (class, domain)
        self.masks: Tensor | None = None  # (tasks, classes) bool in task-incremental form
        self.past_tasks = 0
        self.random: torch.Generator | None = None
        self.replayed: Tensor | None = None  # this step's generated samples, for the generator's own step

    def before_task(self, ctx: TaskContext) -> None:
        x = ctx.task.train.x
        if x.dtype != torch.uint8 and bool((x.min() < 0) | (x.max() > 1)):
            raise ConfigError(f"genreplay: task {ctx.task_index + 1}'s inputs range over [{float(x.min()):g}, "
                              f"{float(x.max()):g}]; its generator models inputs in [0, 1] (uint8 images or scaled)")
        if self.random is None:  # seeded from the run's seed: the run's own draws never move
            self.random = torch.Generator().manual_seed((ctx.generator.initial_seed() * 1_000_003 + 7_919) % 2**63)
        if self.vae is None:
            with torch.random.fork_rng(devices=[]):  # initial weights from our generator, not the global one
                torch.manual_seed(int(torch.randint(2**62, (1,), generator=self.random)))
                self.vae = VAE(ctx.benchmark.input_shape, self.latent).to(ctx.device)
        self.masks = ctx.benchmark.task_masks(ctx.device)
        self.answered = self._seen(ctx, ctx.task_index + 1)

    def ce_weight(self, task_index: int) -> float:
        if task_index == 0:
            return 1.0
        return 1.0 / (task_index + 1) if self.weighting == "task-count" else 1.0 - self.ratio

    def _replay_weight(self, task_index: int) -> float:
        return 1.0 - 1.0 / (task_index + 1) if self.weighting == "task-count" else self.ratio

    def _count(self, real: int) -> int:
        """Generated samples beside ``real`` ones: they make up a share r of the batch."""
        return int(real * self.ratio / (1.0 - self.ratio) + 0.5)

    def _replay(self, ctx: TaskContext, count: int) -> Tensor | None:
        if self.previous_vae is None or count == 0:
            return None
        assert self.random is not None
        ctx.compute.forward_samples += count  # the previous generator's decoder makes them
        return self.previous_vae.sample(count, self.random, ctx.device)

    def penalty(
        self, ctx: TaskContext, batch: Batch, raw_logits: Tensor, features: Features = NO_FEATURES
    ) -> Tensor | None:
        self.replayed = x = self._replay(ctx, self._count(len(batch.y)))
        if x is None or self.teacher is None:
            return None
        if self.masks is not None:  # task-incremental: each sample answers one past task, drawn uniformly
            assert self.random is not None
            tasks = torch.randint(self.past_tasks, (len(x),), generator=self.random).to(ctx.device)
            taught = answered = self.masks[tasks]  # (n, classes)
        else:
            assert self.known is not None and self.answered is not None
            taught, answered = self.known, self.answered
        with torch.no_grad():
            target = self.teacher(x)
        ctx.compute.train_samples += len(x)  # the classifier's forward and backward on them
        ctx.compute.forward_samples += len(x)  # the previous classifier labels them
        if self.targets == "hard":
            term = hard_target_loss(target, ctx.model(x), taught, answered)
        else:
            term = soft_target_loss(target, ctx.model(x), taught, answered, self.temperature)
        return self._replay_weight(ctx.task_index) * term

    def _seen(self, ctx: TaskContext, tasks: int) -> Tensor:
        """(1, classes) bool: the classes of the first ``tasks`` tasks (every class in domain-incremental form)."""
        seen = torch.zeros(1, ctx.benchmark.num_classes, dtype=torch.bool, device=ctx.device)
        seen[0, sorted({c for task in ctx.benchmark.tasks[:tasks] for c in task.classes})] = True
        return seen if ctx.benchmark.scenario == "class" else torch.ones_like(seen)

    def auxiliary(self, ctx: TaskContext) -> Auxiliary | None:
        if self.vae is None or ctx.task_index == ctx.benchmark.num_tasks - 1:
            return None
        return Auxiliary(self.vae, self._generator_loss)

    def _generator_loss(self, ctx: TaskContext, batch: Batch) -> Tensor:
        x = batch.x if self.replayed is None else torch.cat([batch.x, self.replayed])
        self.replayed = None
        return self._vae_loss(ctx, x)

    def _vae_loss(self, ctx: TaskContext, x: Tensor) -> Tensor:
        assert self.vae is not None and self.random is not None
        ctx.compute.train_samples += len(x)
        noise = torch.randn(len(x), self.latent, generator=self.random).to(ctx.device)
        return self.vae.loss(x, noise)

    def after_task(self, ctx: TaskContext) -> None:
        if self.vae is None or ctx.task_index == ctx.benchmark.num_tasks - 1:
            return
        self._train_generator(ctx)
        self.previous_vae = frozen_copy(self.vae)
        self.teacher = frozen_copy(ctx.model)
        self.past_tasks = ctx.task_index + 1
        self.known = self._seen(ctx, self.past_tasks)

    def _train_generator(self, ctx: TaskContext) -> None:
        """``genreplay_epochs`` epochs of the generator alone on the task, with its own replay mixed in."""
        assert self.vae is not None and self.random is not None
        optimizer = torch.optim.Adam(self.vae.parameters(), lr=1e-3)
        split = ctx.task.train
        for _ in range(self.epochs):
            order = torch.randperm(len(split), generator=self.random).to(ctx.device)
            for start in range(0, len(split), ctx.batch_size):
                x = to_float(torch.index_select(split.x, 0, order[start: start + ctx.batch_size]))
                replayed = self._replay(ctx, self._count(len(x)))
                loss = self._vae_loss(ctx, x if replayed is None else torch.cat([x, replayed]))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                ctx.compute.optimizer_steps += 1

    def parameter_bytes(self) -> int:
        """The generator's size in memory: its float parameters' bytes (0 before the first task)."""
        return 0 if self.vae is None else sum(p.numel() * p.element_size() for p in self.vae.parameters())

    def stats(self) -> dict[str, float]:
        return {"generator_bytes": float(self.parameter_bytes())}

    def state_dict(self) -> dict[str, Tensor | float | int]:
        return {}  # the generator models the training data: it stays in this process's memory, nowhere else


def hard_target_loss(teacher_logits: Tensor, student_logits: Tensor, taught: Tensor, answered: Tensor) -> Tensor:
    """Cross-entropy, mean over the batch, of the student's softmax over the ``answered`` classes against the
    teacher's most likely class among its ``taught`` ones (DGR's labels: Shin et al. 2017; van de Ven & Tolias's
    ``DGR`` rows); both (B or 1, classes) bool, ``taught`` within ``answered``."""
    lowest = torch.finfo(student_logits.dtype).min
    labels = teacher_logits.masked_fill(~taught, lowest).argmax(dim=1)
    return F.cross_entropy(student_logits.masked_fill(~answered, lowest), labels)


def soft_target_loss(teacher_logits: Tensor, student_logits: Tensor, taught: Tensor, answered: Tensor,
                     temperature: float) -> Tensor:
    """T²·KL(p_teacher ‖ p_student) at temperature T, mean over the batch: the teacher's softmax over its ``taught``
    classes, 0 on the other ``answered`` ones (van de Ven & Tolias pad the targets so), against the student's
    softmax over the ``answered`` classes; both (B or 1, classes) bool, ``taught`` within ``answered``."""
    lowest = torch.finfo(student_logits.dtype).min  # exp() of it is 0: a class left out weighs nothing
    target = torch.log_softmax((teacher_logits / temperature).masked_fill(~taught, lowest), dim=1)
    student = torch.log_softmax((student_logits / temperature).masked_fill(~answered, lowest), dim=1)
    return temperature**2 * F.kl_div(student, target, reduction="batchmean", log_target=True)


