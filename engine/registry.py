"""Name -> object registries (Dassl's `Registry`), with "did you mean" errors.

A registry is filled when the module defining a class is imported::

    TRAINER_REGISTRY = Registry("TRAINER")

    @TRAINER_REGISTRY.register()
    class CoOp(TrainerX): ...

    TRAINER_REGISTRY.get("CoOp")
"""
from __future__ import annotations

import difflib
from typing import Any, Callable, Iterable, Iterator, TypeVar

from engine.errors import ConfigValueError, UserError

__all__ = ["Registry", "UnknownNameError", "check_availability", "closest_matches"]

T = TypeVar("T")


def closest_matches(name: str, candidates: Iterable[str], n: int = 3, cutoff: float = 0.5) -> list[str]:
    """Up to `n` candidates most similar to `name` (difflib ratio), best first.

    Falls back to a case-insensitive comparison so that "coop" still suggests "CoOp".
    """
    candidates = list(candidates)
    matches = difflib.get_close_matches(name, candidates, n=n, cutoff=cutoff)
    if not matches:
        lowered = {c.lower(): c for c in candidates}
        matches = [lowered[m] for m in difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=cutoff)]
    return matches


def _did_you_mean(name: str, candidates: Iterable[str]) -> str:
    matches = closest_matches(name, candidates)
    return f" Did you mean: {', '.join(matches)}?" if matches else ""


class UnknownNameError(UserError, KeyError):
    """A name (trainer, dataset, ...) that is not registered."""


class Registry:
    """Maps names (an object's `__name__`) to classes or functions."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._obj_map: dict[str, Any] = {}

    @property
    def name(self) -> str:
        return self._name

    def _do_register(self, name: str, obj: Any, force: bool = False) -> None:
        if name in self._obj_map and not force:
            raise KeyError(
                f'An object named "{name}" was already registered in the "{self._name}" registry '
                f"({self._obj_map[name]!r}). Rename it, or pass force=True to replace it."
            )
        self._obj_map[name] = obj

    def register(self, obj: T | None = None, force: bool = False) -> T | Callable[[T], T]:
        """Register `obj` under `obj.__name__`; without `obj`, return a decorator that does so."""
        if obj is None:

            def wrapper(fn_or_class: T) -> T:
                self._do_register(fn_or_class.__name__, fn_or_class, force=force)
                return fn_or_class

            return wrapper

        self._do_register(obj.__name__, obj, force=force)
        return obj

    def get(self, name: str) -> Any:
        """The object registered as `name`; unknown names raise KeyError with suggestions."""
        if name not in self._obj_map:
            known = sorted(self._obj_map)
            raise UnknownNameError(
                f'Unknown name "{name}" in the "{self._name}" registry.{_did_you_mean(name, known)} '
                f"Registered: {known}. (A name is registered when its module is imported.)"
            )
        return self._obj_map[name]

    def registered_names(self) -> list[str]:
        return list(self._obj_map.keys())

    def __contains__(self, name: object) -> bool:
        return name in self._obj_map

    def __iter__(self) -> Iterator[str]:
        return iter(self._obj_map)

    def __len__(self) -> int:
        return len(self._obj_map)

    def __repr__(self) -> str:
        return f"Registry(name={self._name!r}, names={self.registered_names()})"


def check_availability(requested: str, available: Iterable[str]) -> None:
    """Raise ValueError naming the closest available string if `requested` is not available.

    Like Dassl, the suggestion is the single most similar candidate (difflib ratio, ties go to the
    later candidate).
    """
    available = list(available)
    if requested in available:
        return
    best, best_score = None, -1.0
    for cand in available:
        score = difflib.SequenceMatcher(None, requested, cand).ratio()
        if score >= best_score:  # ">=" makes ties go to the later candidate
            best, best_score = cand, score
    hint = f' Did you mean "{best}"?' if best is not None else ""
    raise ConfigValueError(f'The requested one "{requested}" is not available (available: {available}).{hint}')
