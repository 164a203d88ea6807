#!/usr/bin/env bash
# PromptSRC, cross-dataset: train on ImageNet, all classes.
# Usage: [DATA=/path/to/data] bash scripts/promptsrc/xd_train.sh SEED [KEY VALUE ...]   (no DATA: the demo world)
source "$(dirname "$0")/../common.sh"
source "$(dirname "$0")/method.sh"
xd_train "$@"
