"""The method base's side of the frozen-feature cache (`engine.feature_cache`): `ClipMethod`
serves cached image features, in place of images, to a model that declares
`frozen_image_features`, at test time (`test_batches`) and in training (`epoch_batches`) when the
training transform is deterministic or FEATURE_CACHE.TRAIN_VIEWS asks for cached augmented views.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any

import torch

import clip
from engine.errors import ConfigValueError
from engine.feature_cache import FeatureCache, FeatureKey, default_cache_dir, file_sha256, is_deterministic, \
    shard_group

__all__ = ["FrozenFeatureCacheMixin"]


class FrozenFeatureCacheMixin:
    """Mixed into `ClipMethod` (needs its `cfg`, `model`, `device`, `precision`, `autocast`, `uses_autocast`
    and `evaluates_under_autocast`)."""

    def __init__(self, cfg) -> None:
        self.feature_cache_use: dict[str, str] = {}  # split -> hit / built / partial (results.json)
        super().__init__(cfg)

    def _frozen_image_features(self) -> bool:
        """Whether the model declares a frozen, prompt-free image tower (a model that is not a CLIP
        method, e.g. DyT's ViT, does not)."""
        return bool(getattr(self.model, "frozen_image_features", False))

    def uses_feature_cache(self) -> bool:
        """FEATURE_CACHE.ENABLED and a model declaring `frozen_image_features` (checked: no trainable
        parameter in CLIP's image tower)."""
        if not (self.cfg.FEATURE_CACHE.ENABLED and self._frozen_image_features()):
            return False
        trainable = [n for n, p in self.model.clip_model.visual.named_parameters() if p.requires_grad]
        if trainable:
            raise RuntimeError(f"{type(self.model).__name__} sets frozen_image_features but trains CLIP's image "
                               f"tower ({trainable[:3]}): set it to False.")
        return True

    def _feature_cache(self) -> FeatureCache:
        if getattr(self, "_frozen_feature_cache", None) is None:
            root = self.cfg.FEATURE_CACHE.DIR or default_cache_dir()
            self._frozen_feature_cache = FeatureCache(os.path.expanduser(root), self.cfg.DATALOADER.NUM_WORKERS)
        return self._frozen_feature_cache

    def _feature_key(self, transform: Any, autocast: bool, batch_size: int, views: str = "") -> FeatureKey:
        # The precision the tower really runs in: a method may keep it in fp32 under PREC fp16 (TaskRes).
        tower_dtype = next(self.model.clip_model.visual.parameters()).dtype
        prec = f"{self.precision(self.cfg)}, image tower {str(tower_dtype).replace('torch.', '')}"
        device = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else self.device.type
        return FeatureKey(
            backbone_sha256=self._backbone_sha256(),
            encoder=type(self.model).encode_frozen_images.__qualname__, transform=repr(transform), precision=prec,
            autocast=autocast and self.uses_autocast(), device=device, torch_version=torch.__version__,
            batch_size=batch_size, views=views)

    def _backbone_sha256(self) -> str:
        """The backbone file's digest: a released model's is known (its download was checked against
        it); a local file's is computed once and remembered in the cache folder."""
        if getattr(self, "_backbone_digest", None) is None:
            name = self.cfg.MODEL.BACKBONE.NAME
            known = clip.MODEL_FILES.get(name)
            self._backbone_digest = known[1] if known else file_sha256(
                clip.resolve_checkpoint(name), os.path.join(self._feature_cache().root, "backbones"))
        return self._backbone_digest

    def _encode_frozen(self, images: torch.Tensor, autocast: bool) -> torch.Tensor:
        with self.autocast() if autocast else contextlib.nullcontext():
            return self.model.encode_frozen_images(images.to(self.device))

    def test_batches(self, data_loader, split: str):
        """Batches of cached image features when the image tower is frozen and the test transform
        deterministic; the loader otherwise."""
        transform = getattr(data_loader.dataset, "transform", None)  # None: not our DatasetWrapper
        if not self.uses_feature_cache() or not is_deterministic(transform):
            return data_loader
        autocast = self.evaluates_under_autocast()
        found = self._feature_cache().split_features(
            self._feature_key(transform, autocast, data_loader.batch_size), shard_group(self.cfg.DATASET.NAME, split),
            data_loader.dataset.data_source, transform, lambda images: self._encode_frozen(images, autocast))
        self.feature_cache_use[split] = found.status
        return FeatureCache.batches(data_loader, found.features)

    def epoch_batches(self):
        """The training batches from cached features when the image tower is frozen and the training
        transform deterministic, or with FEATURE_CACHE.TRAIN_VIEWS K; the loader's otherwise."""
        loader = self.train_loader_x
        views = int(self.cfg.FEATURE_CACHE.TRAIN_VIEWS)
        if views and not self._frozen_image_features():
            raise ConfigValueError(f"FEATURE_CACHE.TRAIN_VIEWS {views}: {type(self).__name__}'s image tower is not "
                                   "frozen and prompt-free, so its features cannot be cached. Set it to 0.")
        transform = getattr(loader.dataset, "transform", None)
        if not self.uses_feature_cache() or getattr(loader.dataset, "k_tfm", 1) != 1 or transform is None \
                or isinstance(transform, (list, tuple)):
            return super().epoch_batches()
        deterministic = is_deterministic(transform)
        if not deterministic and not views:
            return super().epoch_batches()  # fresh random augmentation each step, as the original
        seed = self.cfg.SEED
        batch_size = self.cfg.DATALOADER.TEST.BATCH_SIZE
        key = self._feature_key(transform, True, batch_size, "" if deterministic else f"{views} views, seed {seed}")
        found = self._feature_cache().split_features(
            key, shard_group(self.cfg.DATASET.NAME, "train_x"), loader.dataset.data_source, transform,
            lambda images: self._encode_frozen(images, True), views=0 if deterministic else views, seed=seed)
        self.feature_cache_use["train_x"] = found.status
        # Which view each step takes: drawn from the seed and epoch, so a resumed run draws the same.
        generator = torch.Generator().manual_seed(max(seed, 0) * 100_003 + self.epoch)
        return FeatureCache.batches(loader, found.features, generator)

    def extra_results(self) -> dict:
        """results.json: where the feature cache served features ({split: hit/built/partial}) and
        FEATURE_CACHE.TRAIN_VIEWS (K > 0 changes the training distribution)."""
        results = super().extra_results()
        results["feature_cache"] = {
            "enabled": bool(self.cfg.FEATURE_CACHE.ENABLED and self._frozen_image_features()),
            "used": dict(self.feature_cache_use),
            "train_views": int(self.cfg.FEATURE_CACHE.TRAIN_VIEWS),
        }
        return results
