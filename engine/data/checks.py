"""Dataset findings that do not stop a run but that a user must see.

Both the DataManager (one log line per finding, every training run) and the dataset doctor
(``WARN`` lines) report them, with the wording built here so that the two agree:

- files under a dataset folder that were skipped because they are not images (`Custom`);
- classes whose names give identical prompts, so that no text-based classifier can tell them
  apart (WordNet names two ImageNet classes ``crane``).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Mapping, Sequence

from engine.data.datasets import IMAGE_EXTENSIONS

__all__ = [
    "IdenticalPromptGroup",
    "prompt_key",
    "find_identical_prompts",
    "describe_identical_prompts",
    "describe_ignored_files",
]


def prompt_key(classname: str) -> str:
    """The class name as the text encoder sees it.

    Trainers put the name into prompts with underscores as spaces (`trainers.common.clean_classname`),
    and CLIP's tokenizer lower-cases the text and collapses runs of whitespace, so names equal after
    those steps give identical prompts.
    """
    return " ".join(classname.replace("_", " ").split()).lower()


@dataclass(frozen=True)
class IdenticalPromptGroup:
    """Classes (two or more) whose names give the same prompt."""

    prompt_name: str  # the shared name as it appears in the prompt
    labels: tuple[int, ...]
    classnames: tuple[str, ...]  # the names as stored, in label order


def find_identical_prompts(lab2cname: Mapping[int, str]) -> list[IdenticalPromptGroup]:
    """Groups of labels whose class names give identical prompts, ordered by their first label."""
    by_key: dict[str, list[int]] = defaultdict(list)
    for label in sorted(lab2cname):
        by_key[prompt_key(lab2cname[label])].append(label)
    groups = [
        IdenticalPromptGroup(key, tuple(labels), tuple(lab2cname[y] for y in labels))
        for key, labels in by_key.items()
        if len(labels) > 1
    ]
    return sorted(groups, key=lambda g: g.labels[0])


def describe_identical_prompts(groups: Sequence[IdenticalPromptGroup]) -> str:
    """One line naming every group with its labels, why it matters and the fix."""
    parts = []
    for group in groups:
        members = ", ".join(f"{y} {name!r}" for y, name in zip(group.labels, group.classnames))
        parts.append(f"{group.prompt_name!r} (labels {members})")
    return (
        f"{len(groups)} group(s) of classes get identical prompts and can never be told apart: "
        f"{'; '.join(parts)}. Give each class a distinct name (class names are compared after "
        f"'_' -> ' ', ignoring case and extra spaces)."
    )


def describe_ignored_files(paths: Sequence[str], n_examples: int = 3) -> str:
    """How many files were skipped as non-images, with the first `n_examples` paths."""
    examples = ", ".join(paths[:n_examples])
    more = f" and {len(paths) - n_examples} more" if len(paths) > n_examples else ""
    return (
        f"ignored {len(paths)} non-image file(s) in the dataset folder, e.g. {examples}{more} "
        f"(only image files are used, by extension: {' '.join(IMAGE_EXTENSIONS)})"
    )
