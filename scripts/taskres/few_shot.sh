#!/usr/bin/env bash
# TaskRes, few-shot: train and test on all classes with SHOTS shots (default 16).
# Usage: [DATA=/path/to/data] bash scripts/taskres/few_shot.sh DATASET SEED [SHOTS] [KEY VALUE ...]   (no DATA: the demo world)
source "$(dirname "$0")/../common.sh"
source "$(dirname "$0")/method.sh"
fs_task "$@"
few_shot "$@"
