#!/usr/bin/env bash
# CLIP-Adapter, cross-dataset / domain generalisation: evaluate DATASET with the model of xd_train.sh.
# Usage: [DATA=/path/to/data] bash scripts/clip_adapter/xd_test.sh DATASET SEED [KEY VALUE ...]   (no DATA: the demo world)
source "$(dirname "$0")/../common.sh"
source "$(dirname "$0")/method.sh"
xd_test "$@"
