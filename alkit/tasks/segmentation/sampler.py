"""Class balance for the patch classifier: every epoch draws equally many training patches from each
labeled class, with replacement, seeded per epoch (:class:`BalancedSampler`)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


class BalancedSampler(Sampler):
    """Draws ``num_samples`` indices per epoch, with replacement, equally many from each class present.

    With ``n`` samples and ``K`` classes every class gets ``n // K`` draws and ``n % K`` randomly chosen
    classes one more. Epoch ``e`` uses ``numpy.random.default_rng([seed, 2, e])``, so a fresh sampler
    repeats the same sequence. With ``with_seeds=True`` it yields ``(index, augmentation seed)`` pairs.
    """

    def __init__(self, labels: np.ndarray, num_samples: int, seed: int = 0, with_seeds: bool = False):
        self.labels = np.asarray(labels)
        if len(self.labels) == 0:
            raise ValueError("cannot sample from no examples")
        self.num_samples, self.seed, self.with_seeds = int(num_samples), int(seed), with_seeds
        self.by_class = [np.flatnonzero(self.labels == c) for c in np.unique(self.labels)]
        self.epoch = 0

    def __len__(self) -> int:
        return self.num_samples

    def draw(self, epoch: int) -> np.ndarray:
        """The indices of one epoch (a pure function of seed and epoch)."""
        rng = np.random.default_rng([self.seed, 2, epoch])
        k = len(self.by_class)
        counts = np.full(k, self.num_samples // k)
        counts[rng.permutation(k)[:self.num_samples % k]] += 1
        picks = np.concatenate([rng.choice(members, size=c, replace=True)
                                for members, c in zip(self.by_class, counts)])
        return rng.permutation(picks)

    def __iter__(self) -> Iterator:
        epoch, self.epoch = self.epoch, self.epoch + 1
        picks = self.draw(epoch)
        if not self.with_seeds:
            return iter(picks.tolist())
        seeds = np.random.default_rng([self.seed, 3, epoch]).integers(0, 2**31 - 1, len(picks))
        return iter(zip(picks.tolist(), seeds.tolist()))
