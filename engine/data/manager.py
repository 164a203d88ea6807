"""Data loaders for a trainer (Dassl's `DataManager`, `DatasetWrapper`, `build_data_loader`)."""
from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import torch
import torchvision.transforms as T
from tabulate import tabulate
from torch.utils.data import DataLoader, Dataset

from engine.data.checks import describe_identical_prompts, describe_ignored_files, find_identical_prompts
from engine.data.datasets import DatasetBase, DatasetError, Datum, build_dataset
from engine.data.samplers import build_sampler
from engine.data.transforms import INTERPOLATION_MODES, build_transform
from engine.errors import ConfigValueError
from engine.utils import read_image
from engine.errors import ConfigValueError

__all__ = ["DataManager", "DatasetWrapper", "build_data_loader"]

logger = logging.getLogger(__name__)


class DatasetWrapper(Dataset):
    """Torch dataset over a list of `Datum`; items are dicts with img, label, domain, impath, index.

    With a list/tuple of transforms the outputs go to "img", "img2", "img3", ...; during training
    each transform is applied DATALOADER.K_TRANSFORMS times (a list of tensors when K > 1).
    DATALOADER.RETURN_IMG0 adds "img0": the image resized to INPUT.SIZE, without augmentation.
    """

    def __init__(self, cfg, data_source: Sequence[Datum], transform: Any = None, is_train: bool = False) -> None:
        self.cfg = cfg
        self.data_source = data_source
        self.transform = transform
        self.is_train = is_train
        # Augmenting an image several times only makes sense during training.
        self.k_tfm = cfg.DATALOADER.K_TRANSFORMS if is_train else 1
        self.return_img0 = cfg.DATALOADER.RETURN_IMG0
        if self.k_tfm > 1 and transform is None:
            raise ConfigValueError(
                f"DATALOADER.K_TRANSFORMS={self.k_tfm} needs a transform to repeat, but transform is None "
                f"(INPUT.NO_TRANSFORM is set?)."
            )
        plain = [T.Resize(tuple(cfg.INPUT.SIZE), interpolation=INTERPOLATION_MODES[cfg.INPUT.INTERPOLATION]), T.ToTensor()]
        if "normalize" in cfg.INPUT.TRANSFORMS:
            plain.append(T.Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD))
        self.to_tensor = T.Compose(plain)

    def __len__(self) -> int:
        return len(self.data_source)

    def __getitem__(self, idx: int) -> dict:
        item = self.data_source[idx]
        output = {"label": item.label, "domain": item.domain, "impath": item.impath, "index": idx}
        img0 = read_image(item.impath)
        if self.transform is None:
            output["img"] = img0
        elif isinstance(self.transform, (list, tuple)):
            for i, tfm in enumerate(self.transform):
                key = "img" if i == 0 else f"img{i + 1}"
                output[key] = self._transform_image(tfm, img0)
        else:
            output["img"] = self._transform_image(self.transform, img0)
        if self.return_img0:
            output["img0"] = self.to_tensor(img0)
        return output

    def _transform_image(self, tfm: Callable, img0: Any) -> Any:
        views = [tfm(img0) for _ in range(self.k_tfm)]
        return views[0] if len(views) == 1 else views


def build_data_loader(
    cfg,
    sampler_type: str = "SequentialSampler",
    data_source: Sequence[Datum] | None = None,
    batch_size: int = 64,
    n_domain: int = 0,
    n_ins: int = 2,
    tfm: Any = None,
    is_train: bool = True,
    dataset_wrapper: type | None = None,
) -> DataLoader:
    """DataLoader over `data_source` with the named sampler.

    drop_last is on only for training when the data fill at least one batch, so a tiny few-shot
    set (e.g. 10 images, batch 32) still yields one partial batch instead of an empty loader.
    """
    if not data_source:
        raise ValueError(f"build_data_loader: data_source is empty (sampler {sampler_type}, is_train={is_train}).")
    sampler = build_sampler(
        sampler_type, cfg=cfg, data_source=data_source, batch_size=batch_size, n_domain=n_domain, n_ins=n_ins
    )
    wrapper_cls = dataset_wrapper or DatasetWrapper
    loader = DataLoader(
        wrapper_cls(cfg, data_source, transform=tfm, is_train=is_train),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        drop_last=is_train and len(data_source) >= batch_size,
        pin_memory=torch.cuda.is_available() and cfg.USE_CUDA,
    )
    if len(loader) == 0:
        raise ConfigValueError(
            f"build_data_loader: the loader is empty ({len(data_source)} items, batch_size={batch_size}, "
            f"sampler {sampler_type}). Lower the batch size or check the sampler settings."
        )
    return loader


def _warn_about_dataset(cfg, dataset: DatasetBase) -> None:
    """One warning line each for skipped non-image files and for classes with identical prompts."""
    if dataset.ignored_files:
        logger.warning("Warning: DATASET.NAME=%s: %s", cfg.DATASET.NAME, describe_ignored_files(dataset.ignored_files))
    groups = find_identical_prompts(dataset.lab2cname)
    if groups:
        logger.warning("Warning: DATASET.NAME=%s: %s", cfg.DATASET.NAME, describe_identical_prompts(groups))


def _check_splits_not_empty(cfg, dataset: DatasetBase) -> None:
    """Refuse to train on an empty test split, or on a val split that exists but holds nothing."""
    problems = []
    if not dataset.test:
        problems.append("test")
    if dataset.val is not None and len(dataset.val) == 0:
        problems.append("val")
    if problems:
        raise DatasetError(
            f"DATASET.NAME={cfg.DATASET.NAME!r} (DATASET.ROOT={cfg.DATASET.ROOT}): the {' and '.join(problems)} "
            f"split is empty, so there is nothing to evaluate on. Check the dataset's split file and image "
            f"folders (python -m datasets.doctor --root {cfg.DATASET.ROOT or '<root>'} --dataset "
            f"{cfg.DATASET.NAME}); see {dataset.docs_ref()}."
        )


class DataManager:
    """Builds the dataset named by cfg.DATASET.NAME and its train_x / train_u / val / test loaders."""

    def __init__(
        self,
        cfg,
        custom_tfm_train: Any = None,
        custom_tfm_test: Any = None,
        dataset_wrapper: type | None = None,
    ) -> None:
        dataset = build_dataset(cfg)
        _check_splits_not_empty(cfg, dataset)
        _warn_about_dataset(cfg, dataset)

        if custom_tfm_train is None:
            tfm_train = build_transform(cfg, is_train=True)
        else:
            logger.info("* Using custom transform for training")
            tfm_train = custom_tfm_train
        if custom_tfm_test is None:
            tfm_test = build_transform(cfg, is_train=False)
        else:
            logger.info("* Using custom transform for testing")
            tfm_test = custom_tfm_test

        dl = cfg.DATALOADER
        self.train_loader_x = build_data_loader(
            cfg,
            sampler_type=dl.TRAIN_X.SAMPLER,
            data_source=dataset.train_x,
            batch_size=dl.TRAIN_X.BATCH_SIZE,
            n_domain=dl.TRAIN_X.N_DOMAIN,
            n_ins=dl.TRAIN_X.N_INS,
            tfm=tfm_train,
            is_train=True,
            dataset_wrapper=dataset_wrapper,
        )

        self.train_loader_u = None
        if dataset.train_u:
            u = dl.TRAIN_X if dl.TRAIN_U.SAME_AS_X else dl.TRAIN_U
            self.train_loader_u = build_data_loader(
                cfg,
                sampler_type=u.SAMPLER,
                data_source=dataset.train_u,
                batch_size=u.BATCH_SIZE,
                n_domain=u.N_DOMAIN,
                n_ins=u.N_INS,
                tfm=tfm_train,
                is_train=True,
                dataset_wrapper=dataset_wrapper,
            )

        self.val_loader = None
        if dataset.val:
            self.val_loader = self._test_loader(cfg, dataset.val, tfm_test, dataset_wrapper)
        self.test_loader = self._test_loader(cfg, dataset.test, tfm_test, dataset_wrapper)

        self._num_classes = dataset.num_classes
        self._num_source_domains = len(cfg.DATASET.SOURCE_DOMAINS)
        self._lab2cname = dataset.lab2cname
        self.dataset: DatasetBase = dataset
        self.tfm_train = tfm_train
        self.tfm_test = tfm_test

        if cfg.VERBOSE:
            self.show_dataset_summary(cfg)

    @staticmethod
    def _test_loader(cfg, data_source, tfm, dataset_wrapper) -> DataLoader:
        return build_data_loader(
            cfg,
            sampler_type=cfg.DATALOADER.TEST.SAMPLER,
            data_source=data_source,
            batch_size=cfg.DATALOADER.TEST.BATCH_SIZE,
            tfm=tfm,
            is_train=False,
            dataset_wrapper=dataset_wrapper,
        )

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def num_source_domains(self) -> int:
        return self._num_source_domains

    @property
    def lab2cname(self) -> dict[int, str]:
        return self._lab2cname

    def summary_rows(self, cfg) -> list[list[str]]:
        """The rows of the dataset summary table."""
        ds = self.dataset
        rows = [["Dataset", cfg.DATASET.NAME]]
        if cfg.DATASET.SOURCE_DOMAINS:
            rows.append(["Source", str(cfg.DATASET.SOURCE_DOMAINS)])
        if cfg.DATASET.TARGET_DOMAINS:
            rows.append(["Target", str(cfg.DATASET.TARGET_DOMAINS)])
        rows.append(["# classes", f"{self.num_classes:,}"])
        rows.append(["# train_x", f"{len(ds.train_x):,}"])
        if ds.train_u:
            rows.append(["# train_u", f"{len(ds.train_u):,}"])
        if ds.val:
            rows.append(["# val", f"{len(ds.val):,}"])
        rows.append(["# test", f"{len(ds.test):,}"])
        return rows

    def show_dataset_summary(self, cfg) -> None:
        logger.info("\n%s", tabulate(self.summary_rows(cfg)))
