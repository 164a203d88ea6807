"""UCF101 (Soomro et al., 2012) as used by CoOp: the middle frame of each video, 101 actions.

Layout under DATASET.ROOT (see DATASETS.md#ucf101)::

    ucf101/
      UCF-101-midframes/<Split_Action_Name>/v_<Action>_gXX_cYY.jpg
      split_zhou_UCF101.json       (CoOp's split; generated and saved when missing)
      ucfTrainTestlist/            (only needed to generate the split)
        classInd.txt               (<1-based id> <CamelCaseAction>)
        trainlist01.txt            (<Action>/v_..._cYY.avi <id>)
        testlist01.txt             (<Action>/v_..._cYY.avi)
      split_fewshot/               (few-shot caches, written on first use)

`ApplyEyeMakeup` is split at capitals into `Apply_Eye_Makeup`, both the class name and the
image sub-folder.
"""
from __future__ import annotations

import os
import re

from engine.data import DATASET_REGISTRY, DatasetError, Datum, SplitFileDataset

__all__ = ["UCF101", "split_action_name"]

RAW_FILES = ("ucfTrainTestlist/classInd.txt", "ucfTrainTestlist/trainlist01.txt", "ucfTrainTestlist/testlist01.txt")


def split_action_name(action: str) -> str:
    """`ApplyEyeMakeup` -> `Apply_Eye_Makeup`: the capitalised words joined with `_`."""
    return "_".join(re.findall(r"[A-Z][^A-Z]*", action))


@DATASET_REGISTRY.register()
class UCF101(SplitFileDataset):
    """UCF101 mid-frames with CoOp's split file (80/20 train/val from trainlist01, testlist01 as test)."""

    dataset_dir = "ucf101"
    docs_anchor = "ucf101"
    image_subdir = "UCF-101-midframes"
    required_paths = (image_subdir,)
    split_file = "split_zhou_UCF101.json"
    generates_split = True
    raw_files = RAW_FILES
    official_counts = {"classes": 101, "train": 7639, "val": 1898, "test": 3783}

    def generate_split(self) -> tuple[list[Datum], list[Datum], list[Datum]]:
        """80/20 per-class split of trainlist01.txt; testlist01.txt is the test set."""
        cname2lab = {}
        for line in self.read_raw_lines(RAW_FILES[0]):
            label, _, action = line.partition(" ")
            if not label.isdigit() or not action.strip():
                raise DatasetError(
                    f"UCF101: {RAW_FILES[0]} line {line!r} should be '<1-based class id> <ActionName>'. "
                    f"Use the file from the official UCF101 train/test split archive. See {self.docs_ref()}."
                )
            cname2lab[action.strip()] = int(label) - 1  # 1-based in the file
        trainval = self.read_data(cname2lab, RAW_FILES[1])
        test = self.read_data(cname2lab, RAW_FILES[2])
        train, val = self.split_trainval(trainval)
        return train, val, test

    def read_data(self, cname2lab: dict[str, int], text_file: str) -> list[Datum]:
        """Items of a list file: `Action/v_x.avi [id]` -> UCF-101-midframes/<Split_Action>/v_x.jpg."""
        items = []
        for line in self.read_raw_lines(text_file):
            action, _, filename = line.split(" ")[0].partition("/")
            if action not in cname2lab:
                raise DatasetError(
                    f"UCF101: {text_file} lists {line!r}, whose action {action!r} is not in classInd.txt. "
                    f"See {self.docs_ref()}."
                )
            renamed = split_action_name(action)
            impath = os.path.join(self.image_dir, renamed, filename.replace(".avi", ".jpg"))
            try:
                items.append(Datum(impath=impath, label=cname2lab[action], classname=renamed))
            except FileNotFoundError as exc:
                raise DatasetError(
                    f"UCF101: {text_file} lists {impath}, which does not exist. Is UCF-101-midframes complete? "
                    f"See {self.docs_ref()}."
                ) from exc
        return items
