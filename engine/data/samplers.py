"""Samplers by name (Dassl's `build_sampler`).

All randomness comes from torch's global RNG: `RandomSampler` is torch's own with generator=None
(it draws its seed from the global generator each epoch), and the custom samplers below draw with
`torch.randperm`/`torch.randint`. Saving and restoring `torch.get_rng_state()` at an epoch boundary
therefore reproduces the following epochs exactly.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from typing import Iterator, Sequence

import torch
from engine.errors import ConfigValueError
from torch.utils.data import RandomSampler, Sampler, SequentialSampler

__all__ = ["build_sampler", "RandomDomainSampler", "SeqDomainSampler", "RandomClassSampler", "SAMPLER_NAMES"]

logger = logging.getLogger(__name__)


def _take(pool: list[int], k: int, generator: torch.Generator | None) -> list[int]:
    """k distinct elements of `pool` in random order (like random.sample)."""
    perm = torch.randperm(len(pool), generator=generator)[:k].tolist()
    return [pool[i] for i in perm]


def _estimate_length(sampler: "_TorchRandomSampler") -> int:
    """Length of one pass, computed with a private generator so the global RNG is left untouched."""
    return sum(1 for _ in sampler._indices(torch.Generator().manual_seed(0)))


class _TorchRandomSampler(Sampler):
    """Base for the custom samplers: `__iter__` draws from torch's global RNG."""

    length: int

    def _indices(self, generator: torch.Generator | None) -> list[int]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices(None))

    def __len__(self) -> int:
        return self.length


def _group(data_source: Sequence, attr: str) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = defaultdict(list)
    for i, item in enumerate(data_source):
        groups[getattr(item, attr)].append(i)
    return groups


class RandomDomainSampler(_TorchRandomSampler):
    """Each batch: `n_domain` random domains x batch_size/n_domain images each, without replacement.

    Stops once a chosen domain has fewer than batch_size/n_domain images left. n_domain <= 0 means
    all domains. The length is an estimate from one pass (as in Dassl).
    """

    def __init__(self, data_source: Sequence, batch_size: int, n_domain: int) -> None:
        self.domain_dict = _group(data_source, "domain")
        self.domains = list(self.domain_dict)
        if n_domain is None or n_domain <= 0:
            n_domain = len(self.domains)
        if n_domain > len(self.domains) or batch_size % n_domain != 0:
            raise ConfigValueError(
                f"RandomDomainSampler: batch_size={batch_size} must be divisible by n_domain={n_domain}, "
                f"and n_domain must not exceed the {len(self.domains)} domains present."
            )
        self.n_img_per_domain = batch_size // n_domain
        self.batch_size, self.n_domain = batch_size, n_domain
        self.length = _estimate_length(self)

    def _batch_domains(self, generator: torch.Generator | None) -> list:
        """The domains one batch draws from."""
        return _take(self.domains, self.n_domain, generator)

    def _indices(self, generator: torch.Generator | None) -> list[int]:
        remaining = {d: list(v) for d, v in self.domain_dict.items()}
        final: list[int] = []
        while True:
            stop = False
            for domain in self._batch_domains(generator):
                pool = remaining[domain]
                if len(pool) < self.n_img_per_domain:
                    return final
                chosen = _take(pool, self.n_img_per_domain, generator)
                final.extend(chosen)
                chosen_set = set(chosen)
                remaining[domain] = [i for i in pool if i not in chosen_set]
                stop = stop or len(remaining[domain]) < self.n_img_per_domain
            if stop:
                return final


class SeqDomainSampler(RandomDomainSampler):
    """Each batch visits every domain in sorted order, batch_size/n_domains random images each."""

    def __init__(self, data_source: Sequence, batch_size: int) -> None:
        self.domain_dict = _group(data_source, "domain")
        self.domains = sorted(self.domain_dict)
        self.n_img_per_domain = batch_size // len(self.domains)
        if self.n_img_per_domain < 1:
            raise ConfigValueError(f"SeqDomainSampler: batch_size={batch_size} is smaller than the {len(self.domains)} domains.")
        self.batch_size = batch_size
        self.length = _estimate_length(self)

    def _batch_domains(self, generator: torch.Generator | None) -> list:
        return self.domains  # every domain, in sorted order


class RandomClassSampler(_TorchRandomSampler):
    """Each batch: batch_size // n_ins random classes x n_ins instances.

    Classes with fewer than n_ins items are topped up by drawing with replacement. The length is an
    estimate from one pass (as in Dassl).
    """

    def __init__(self, data_source: Sequence, batch_size: int, n_ins: int) -> None:
        if batch_size < n_ins:
            raise ConfigValueError(f"RandomClassSampler: batch_size={batch_size} must be >= n_ins={n_ins}.")
        self.index_dic = _group(data_source, "label")
        self.labels = list(self.index_dic)
        self.batch_size, self.n_ins = batch_size, n_ins
        self.ncls_per_batch = batch_size // n_ins
        if len(self.labels) < self.ncls_per_batch:
            raise ConfigValueError(
                f"RandomClassSampler: {len(self.labels)} classes, but each batch needs "
                f"batch_size // n_ins = {self.ncls_per_batch}. Lower DATALOADER.TRAIN_X.BATCH_SIZE or raise N_INS."
            )
        self.length = _estimate_length(self)

    def _indices(self, generator: torch.Generator | None) -> list[int]:
        chunks: dict[int, list[list[int]]] = {}
        for label in self.labels:
            idxs = self.index_dic[label]
            if len(idxs) < self.n_ins:
                picks = torch.randint(len(idxs), (self.n_ins,), generator=generator).tolist()
                idxs = [idxs[i] for i in picks]
            idxs = _take(idxs, len(idxs), generator)  # shuffle
            n_full = len(idxs) // self.n_ins
            chunks[label] = [idxs[k * self.n_ins : (k + 1) * self.n_ins] for k in range(n_full)]
        available = list(self.labels)
        final: list[int] = []
        while len(available) >= self.ncls_per_batch:
            for label in _take(available, self.ncls_per_batch, generator):
                final.extend(chunks[label].pop(0))
                if not chunks[label]:
                    available.remove(label)
        return final


SAMPLER_NAMES = ("RandomSampler", "SequentialSampler", "RandomDomainSampler", "SeqDomainSampler", "RandomClassSampler")


def build_sampler(
    sampler_type: str,
    cfg=None,
    data_source: Sequence | None = None,
    batch_size: int = 32,
    n_domain: int = 0,
    n_ins: int = 16,
) -> Sampler:
    """The sampler named `sampler_type` over `data_source`; unknown names raise ValueError."""
    if sampler_type == "RandomSampler":
        return RandomSampler(data_source)  # generator=None: seeded from torch's global RNG
    if sampler_type == "SequentialSampler":
        return SequentialSampler(data_source)
    if sampler_type == "RandomDomainSampler":
        return RandomDomainSampler(data_source, batch_size, n_domain)
    if sampler_type == "SeqDomainSampler":
        return SeqDomainSampler(data_source, batch_size)
    if sampler_type == "RandomClassSampler":
        return RandomClassSampler(data_source, batch_size, n_ins)
    raise ConfigValueError(f"Unknown sampler type: {sampler_type!r}; choose one of {list(SAMPLER_NAMES)}.")
