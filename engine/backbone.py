"""A backbone carries its own preprocessing, as timm's `pretrained_cfg` and open_clip's do.

The engine's transforms read `INPUT.SIZE`, `INPUT.PIXEL_MEAN`, `INPUT.PIXEL_STD` and
`INPUT.INTERPOLATION` (and normalise only with "normalize" in `INPUT.TRANSFORMS`, as Dassl). `apply_preprocess` fills them from the backbone: a key the configuration
does not set takes the backbone's value; a key it sets to something else keeps the config's value
with a warning naming both, except the input size, which the model fixes (a ViT's positional
embedding has one size), so there the backbone's value wins, also with a warning.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Collection, Mapping

__all__ = ["Preprocess", "PREPROCESS_KEYS", "apply_preprocess"]

# Preprocess field -> config key
PREPROCESS_KEYS = {
    "size": "INPUT.SIZE",
    "mean": "INPUT.PIXEL_MEAN",
    "std": "INPUT.PIXEL_STD",
    "interpolation": "INPUT.INTERPOLATION",
}


@dataclass(frozen=True)
class Preprocess:
    """Input size (H, W), per-channel mean and std, and the resize interpolation of a backbone."""

    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str

    @classmethod
    def from_pretrained_cfg(cls, cfg: Mapping[str, Any]) -> "Preprocess":
        """From timm's `pretrained_cfg` vocabulary (``input_size`` (C, H, W), ``mean``, ``std``,
        ``interpolation``), which our CLIP's `preprocess_cfg` uses too."""
        _, height, width = cfg["input_size"]
        return cls((int(height), int(width)), tuple(float(m) for m in cfg["mean"]),
                   tuple(float(s) for s in cfg["std"]), str(cfg["interpolation"]))


def _get(cfg: Any, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def _set(cfg: Any, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = cfg
    for part in parents:
        node = node[part]
    node[leaf] = value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return len(a) == len(b) and all(abs(float(x) - float(y)) < 1e-9 for x, y in zip(a, b))


def apply_preprocess(cfg: Any, preprocess: Preprocess, explicit: Collection[str], backbone: str) -> list[str]:
    """Fill the INPUT keys of the (unfrozen) `cfg` from `preprocess`; `explicit` holds the dotted
    keys the configuration set (files, flags, KEY VALUE options). Returns the warnings for the
    caller to log (the run's log is usually not open yet when the config is resolved).

    The backbone's mean and std only act through the "normalize" transform: a configuration that
    does not choose INPUT.TRANSFORMS gets it; one that chooses transforms without it is warned."""
    warnings = []
    transforms = list(cfg.INPUT.TRANSFORMS)
    if "normalize" not in transforms:
        if "INPUT.TRANSFORMS" not in explicit:
            cfg.INPUT.TRANSFORMS = type(cfg.INPUT.TRANSFORMS)([*transforms, "normalize"])
        else:
            warnings.append(f"INPUT.TRANSFORMS {transforms} has no 'normalize', but backbone {backbone} expects "
                            f"images normalised with its mean and std: the images go in unnormalised.")
    for field, key in PREPROCESS_KEYS.items():
        ours = getattr(preprocess, field)
        current = _get(cfg, key)
        if _same(current, ours):
            continue
        value = type(current)(ours) if isinstance(current, (list, tuple)) else ours
        if key not in explicit:
            _set(cfg, key, value)
            continue
        if field == "size":
            _set(cfg, key, value)
            message = (f"{key} {tuple(current)} is set by the configuration, but backbone {backbone} takes "
                       f"{tuple(ours)}: using {tuple(ours)}.")
        else:
            message = (f"{key} {current} is set by the configuration, but backbone {backbone} was trained with "
                       f"{value}: using the configuration's value.")
        warnings.append(message)
    return warnings
