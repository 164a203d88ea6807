"""Samplers: names, torch-RNG reproducibility, class/domain batch structure."""
from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.utils.data import RandomSampler, SequentialSampler

from engine.data import Datum, build_sampler
from engine.data.samplers import RandomClassSampler, RandomDomainSampler, SeqDomainSampler


def items(labels, domains=None):
    domains = domains or [0] * len(labels)
    return [Datum(f"/x/{i}.jpg", y, d, f"c{y}", check_exists=False) for i, (y, d) in enumerate(zip(labels, domains))]


def test_names_and_unknown():
    data = items([0, 1, 2])
    assert isinstance(build_sampler("RandomSampler", data_source=data), RandomSampler)
    assert isinstance(build_sampler("SequentialSampler", data_source=data), SequentialSampler)
    assert list(build_sampler("SequentialSampler", data_source=data)) == [0, 1, 2]
    with pytest.raises(ValueError, match="Unknown sampler type: 'Shuffle'"):
        build_sampler("Shuffle", data_source=data)


def test_random_sampler_follows_global_torch_rng():
    sampler = build_sampler("RandomSampler", data_source=items(list(range(50))))
    torch.manual_seed(0)
    state = torch.get_rng_state()
    first = [list(sampler), list(sampler)]
    assert first[0] != first[1] and sorted(first[0]) == list(range(50))
    torch.set_rng_state(state)
    assert [list(sampler), list(sampler)] == first


def test_random_class_sampler_structure_and_rng():
    labels = [0] * 5 + [1] * 4 + [2] * 2 + [3] * 6
    data = items(labels)
    before = torch.get_rng_state()
    sampler = RandomClassSampler(data, batch_size=6, n_ins=3)
    assert torch.equal(before, torch.get_rng_state())  # the length estimate leaves the global RNG alone
    torch.manual_seed(1)
    order = list(sampler)
    assert len(order) % 6 == 0 and len(order) > 0
    for start in range(0, len(order), 3):  # consecutive groups of n_ins share a label
        assert len({labels[i] for i in order[start : start + 3]}) == 1
    for start in range(0, len(order), 6):  # two different classes per batch
        assert len({labels[i] for i in order[start : start + 6]}) == 2
    torch.manual_seed(1)
    assert list(sampler) == order
    with pytest.raises(ValueError, match="n_ins"):
        RandomClassSampler(data, batch_size=2, n_ins=3)


def test_domain_samplers():
    domains = [0] * 6 + [1] * 6 + [2] * 6
    data = items([0] * 18, domains)
    torch.manual_seed(0)
    rds = RandomDomainSampler(data, batch_size=4, n_domain=2)
    order = list(rds)
    assert len(order) > 0 and len(order) % 4 == 0 and len(set(order)) == len(order)
    for start in range(0, len(order), 2):
        assert len({domains[i] for i in order[start : start + 2]}) == 1
    seq = SeqDomainSampler(data, batch_size=6)
    order = list(seq)
    assert [domains[i] for i in order[:6]] == [0, 0, 1, 1, 2, 2]
    assert Counter(domains[i] for i in order) == {0: 6, 1: 6, 2: 6}
    with pytest.raises(ValueError, match="divisible"):
        RandomDomainSampler(data, batch_size=5, n_domain=2)
