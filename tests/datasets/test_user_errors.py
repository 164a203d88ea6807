"""Every dataset reports a missing data folder as a user error that names the folder and the docs."""
from __future__ import annotations

import pytest

import datasets  # noqa: F401  (registers every dataset)
from engine.data import DATASET_REGISTRY, build_dataset
from engine.errors import UserError
from tests.factories.vtab_custom import small_cfg

# Demo datasets generate their data when it is missing; Custom has no fixed folder (tests/datasets/test_custom.py).
CHECKED = sorted(n for n in DATASET_REGISTRY.registered_names() if n != "Custom" and not n.startswith("Demo"))


@pytest.mark.parametrize("name", CHECKED)
def test_missing_data_folder_is_a_user_error(tmp_path, name):
    with pytest.raises(UserError) as info:
        build_dataset(small_cfg(tmp_path, name))
    message = str(info.value)
    assert str(tmp_path) in message and "DATASETS.md#" in message
