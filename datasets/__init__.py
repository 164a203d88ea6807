"""Dataset classes; importing this package registers each of them in DATASET_REGISTRY."""
from datasets import caltech101  # noqa: F401  (registers Caltech101)
