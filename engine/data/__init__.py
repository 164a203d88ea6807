"""Data layer: records, datasets, transforms, samplers and loaders (Dassl's `dassl.data`)."""
from engine.data.datasets import (
    DATASET_REGISTRY,
    IMAGE_EXTENSIONS,
    DatasetBase,
    DatasetError,
    Datum,
    SplitFileDataset,
    UnsafeCacheError,
    build_dataset,
    is_image_file,
)
from engine.data.manager import DataManager, DatasetWrapper, build_data_loader
from engine.data.samplers import build_sampler
from engine.data.transforms import INTERPOLATION_MODES, build_transform

__all__ = [
    "Datum",
    "DatasetBase",
    "SplitFileDataset",
    "DatasetError",
    "UnsafeCacheError",
    "IMAGE_EXTENSIONS",
    "is_image_file",
    "DATASET_REGISTRY",
    "build_dataset",
    "DataManager",
    "DatasetWrapper",
    "build_data_loader",
    "build_transform",
    "INTERPOLATION_MODES",
    "build_sampler",
]
