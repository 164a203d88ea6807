"""Dataset classes; importing this package registers each of them in DATASET_REGISTRY."""
from datasets import (  # noqa: F401  (imported for registration)
    caltech101,
    custom,
    dtd,
    eurosat,
    fgvc_aircraft,
    food101,
    imagenet,
    imagenet_variants,
    oxford_flowers,
    oxford_pets,
    stanford_cars,
    sun397,
    ucf101,
    vtab,
)
