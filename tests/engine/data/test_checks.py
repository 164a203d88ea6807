"""Warnings about a dataset's class names and skipped files (engine.data.checks)."""
from __future__ import annotations

from engine.data import IMAGE_EXTENSIONS, is_image_file
from engine.data.checks import (
    IdenticalPromptGroup,
    describe_identical_prompts,
    describe_ignored_files,
    find_identical_prompts,
    prompt_key,
)


def test_prompt_key_matches_what_the_text_encoder_sees():
    assert prompt_key("Red_Fox") == prompt_key(" red  fox ") == prompt_key("RED FOX") == "red fox"
    assert prompt_key("red-fox") != prompt_key("red fox")  # punctuation is part of the prompt
    assert prompt_key("crane") != prompt_key("construction crane")


def test_identical_prompt_groups_name_labels_in_order():
    lab2cname = {0: "dog", 1: "crane", 2: "Red_Fox", 3: "maillot", 4: "crane", 5: "red fox", 6: "maillot", 7: "Crane"}
    groups = find_identical_prompts(lab2cname)
    assert groups == [
        IdenticalPromptGroup("crane", (1, 4, 7), ("crane", "crane", "Crane")),
        IdenticalPromptGroup("red fox", (2, 5), ("Red_Fox", "red fox")),
        IdenticalPromptGroup("maillot", (3, 6), ("maillot", "maillot")),
    ]
    text = describe_identical_prompts(groups)
    assert text.startswith("3 group(s) of classes get identical prompts and can never be told apart: ")
    assert "'crane' (labels 1 'crane', 4 'crane', 7 'Crane'); 'red fox' (labels 2 'Red_Fox', 5 'red fox')" in text
    assert find_identical_prompts({0: "cat", 1: "dog"}) == []


def test_image_files_by_extension_in_any_case():
    assert is_image_file("a/b/IMG_001.JPG") and is_image_file("x.webp") and is_image_file("scan.TIFF")
    assert not is_image_file("README.txt") and not is_image_file("Thumbs.db") and not is_image_file("jpg")
    assert ".png" in IMAGE_EXTENSIONS


def test_ignored_files_summary_counts_and_shows_examples():
    paths = [f"/d/cat/file{i}.txt" for i in range(5)]
    text = describe_ignored_files(paths, n_examples=2)
    assert text.startswith("ignored 5 non-image file(s) in the dataset folder, e.g. /d/cat/file0.txt, "
                           "/d/cat/file1.txt and 3 more (only image files are used")
    assert "e.g. /d/cat/file0.txt, /d/cat/file1.txt (only image" in describe_ignored_files(paths[:2], n_examples=2)
