#!/usr/bin/env bash
# PromptSRC, base-to-new: train on the base classes (its closing test gives the base accuracy).
# Usage: [DATA=/path/to/data] bash scripts/promptsrc/base2new_train.sh DATASET SEED [KEY VALUE ...]   (no DATA: the demo world)
source "$(dirname "$0")/../common.sh"
source "$(dirname "$0")/method.sh"
b2n_train "$@"
