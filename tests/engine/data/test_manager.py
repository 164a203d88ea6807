"""DatasetWrapper, build_data_loader (conditional drop_last) and DataManager end to end."""
from __future__ import annotations

import logging

import pytest
import torch
import torchvision.transforms as T

import datasets  # noqa: F401  (registers Caltech101)
from engine.data import DataManager, DatasetWrapper, build_data_loader, build_transform
from tests.factories.datasets import caltech_cfg


@pytest.fixture
def cfg(tmp_path):
    return caltech_cfg(tmp_path, size=16)


@pytest.mark.parametrize(
    "n_items, batch, is_train, expected_batches, expected_seen",
    [
        (10, 32, True, 1, 10),  # fewer than one batch: keep the partial batch
        (40, 32, True, 1, 32),  # at least one batch: drop the ragged rest
        (40, 32, False, 2, 40),  # evaluation never drops
        (32, 32, True, 1, 32),
    ],
)
def test_drop_last_only_when_set_fills_a_batch(cfg, make_items, n_items, batch, is_train, expected_batches, expected_seen):
    data = make_items([i % 3 for i in range(n_items)], size=(8, 8))
    tfm = build_transform(cfg, is_train=is_train)
    loader = build_data_loader(cfg, "SequentialSampler", data, batch_size=batch, tfm=tfm, is_train=is_train)
    assert loader.drop_last == (is_train and n_items >= batch)
    assert len(loader) == expected_batches
    assert sum(len(b["label"]) for b in loader) == expected_seen


def test_empty_loader_is_a_clear_error(cfg, make_items):
    data = make_items([0, 1, 2])  # one domain with 3 images cannot fill a 4-image domain batch
    with pytest.raises(ValueError, match="loader is empty"):
        build_data_loader(cfg, "RandomDomainSampler", data, batch_size=4, n_domain=1, tfm=build_transform(cfg))
    with pytest.raises(ValueError, match="data_source is empty"):
        build_data_loader(cfg, "SequentialSampler", [], batch_size=4)


def test_wrapper_item_keys_k_transforms_and_img0(cfg, make_items):
    data = make_items([0, 1], size=(30, 20))
    cfg.DATALOADER.K_TRANSFORMS = 3
    cfg.DATALOADER.RETURN_IMG0 = True
    tfm = build_transform(cfg, is_train=True)
    item = DatasetWrapper(cfg, data, transform=tfm, is_train=True)[1]
    assert set(item) == {"img", "img0", "label", "domain", "impath", "index"}
    assert item["label"] == 1 and item["index"] == 1 and item["impath"] == data[1].impath
    assert isinstance(item["img"], list) and len(item["img"]) == 3 and item["img"][0].shape == (3, 16, 16)
    assert item["img0"].shape == (3, 16, 16)
    # K_TRANSFORMS only applies to training; a list of transforms gives img, img2.
    item = DatasetWrapper(cfg, data, transform=[tfm, T.Compose([T.Resize((5, 7)), T.ToTensor()])], is_train=False)[0]
    assert item["img"].shape == (3, 16, 16) and item["img2"].shape == (3, 5, 7)
    with pytest.raises(ValueError, match="K_TRANSFORMS"):
        DatasetWrapper(cfg, data, transform=None, is_train=True)


def test_corrupt_image_error_names_file(cfg, make_items):
    data = make_items([0, 1])
    with open(data[1].impath, "wb") as f:
        f.write(b"definitely not a jpeg")
    wrapper = DatasetWrapper(cfg, data, transform=build_transform(cfg, is_train=False))
    with pytest.raises(OSError, match="img_001.jpg"):
        wrapper[1]


def test_datamanager_end_to_end(caltech_root, caplog):
    cfg = caltech_cfg(caltech_root, num_shots=2, seed=1, size=16)
    with caplog.at_level(logging.INFO):
        dm = DataManager(cfg)
    assert dm.num_classes == 6 and dm.num_source_domains == 0
    assert dm.lab2cname[0] == "face"
    assert dm.train_loader_u is None
    assert len(dm.dataset.train_x) == 12 and len(dm.dataset.val) == 12 and len(dm.dataset.test) == 12
    assert len(dm.train_loader_x) == 3 and len(dm.val_loader) == 3 and len(dm.test_loader) == 3
    batch = next(iter(dm.train_loader_x))
    assert batch["img"].shape == (4, 3, 16, 16) and batch["label"].dtype == torch.int64
    assert len(batch["impath"]) == 4
    test_labels = torch.cat([b["label"] for b in dm.test_loader]).tolist()
    assert test_labels == [x.label for x in dm.dataset.test]  # sequential order
    assert "# train_x" in caplog.text and "Caltech101" in caplog.text
    assert dm.summary_rows(cfg)[-1] == ["# test", "12"]


def test_datamanager_custom_transform_and_rng_replay(caltech_root):
    cfg = caltech_cfg(caltech_root, size=16)
    custom = T.Compose([T.Resize((8, 8)), T.ToTensor()])
    dm = DataManager(cfg, custom_tfm_train=custom)
    assert dm.tfm_train is custom and next(iter(dm.train_loader_x))["img"].shape[-2:] == (8, 8)

    # Restoring torch's RNG at an epoch boundary replays the next epoch's order and augmentations.
    dm = DataManager(cfg)
    torch.manual_seed(0)
    state = torch.get_rng_state()

    def epoch():
        return [(b["index"].tolist(), b["img"]) for b in dm.train_loader_x]

    first = epoch()
    torch.set_rng_state(state)
    again = epoch()
    assert [i for i, _ in first] == [i for i, _ in again]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(first, again))
    assert [i for i, _ in epoch()] != [i for i, _ in first]
