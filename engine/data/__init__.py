"""Data layer: records, datasets, transforms, samplers and loaders (Dassl's `dassl.data`)."""
from engine.data.datasets import (
    DATASET_REGISTRY,
    DatasetBase,
    DatasetError,
    Datum,
    SplitFileDataset,
    build_dataset,
)
from engine.data.manager import DataManager, DatasetWrapper, build_data_loader
from engine.data.samplers import build_sampler
from engine.data.transforms import INTERPOLATION_MODES, build_transform

__all__ = [
    "Datum",
    "DatasetBase",
    "SplitFileDataset",
    "DatasetError",
    "DATASET_REGISTRY",
    "build_dataset",
    "DataManager",
    "DatasetWrapper",
    "build_data_loader",
    "build_transform",
    "INTERPOLATION_MODES",
    "build_sampler",
]
