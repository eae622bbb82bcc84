"""A small variational autoencoder: the generator of generative replay (``sweep.strategies.genreplay``).

An MLP, sized as van de Ven & Tolias's split-MNIST VAE: two fully connected layers of ``hidden`` each
way, a Gaussian latent with a standard normal prior, a Bernoulli decoder (inputs in [0, 1]).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

HIDDEN = 400  # van de Ven & Tolias's split-MNIST VAE: two fully connected layers of 400 each way


class VAE(nn.Module):
    """An MLP variational autoencoder of inputs in [0, 1]: Bernoulli decoder, standard normal prior."""

    def __init__(self, input_shape: tuple[int, ...], latent: int, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.input_shape, self.latent = tuple(input_shape), latent
        size = math.prod(input_shape)
        self.encoder = nn.Sequential(nn.Linear(size, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.mean, self.log_var = nn.Linear(hidden, latent), nn.Linear(hidden, latent)
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                     nn.Linear(hidden, size))

    def loss(self, x: Tensor, noise: Tensor) -> Tensor:
        """The negative ELBO per input value, mean over the batch; ``noise`` (B, latent) standard normal."""
        flat = x.flatten(1)  # (B, size)
        h = self.encoder(flat)
        mean, log_var = self.mean(h), self.log_var(h)
        z = mean + torch.exp(0.5 * log_var) * noise
        reconstruction = F.binary_cross_entropy_with_logits(self.decoder(z), flat, reduction="none").sum(1)
        kl = -0.5 * (1 + log_var - mean.square() - log_var.exp()).sum(1)
        return (reconstruction + kl).mean() / flat.shape[1]

    @torch.no_grad()
    def sample(self, count: int, generator: torch.Generator, device: torch.device) -> Tensor:
        """``count`` decoded draws from the prior, (count, *input_shape) in [0, 1], on ``device``."""
        z = torch.randn(count, self.latent, generator=generator).to(device)
        return torch.sigmoid(self.decoder(z)).view(count, *self.input_shape)
