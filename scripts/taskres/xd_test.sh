#!/usr/bin/env bash
# TaskRes, cross-dataset / domain generalisation: evaluate DATASET with the model of xd_train.sh.
# Usage: [DATA=/path/to/data] bash scripts/taskres/xd_test.sh DATASET SEED [KEY VALUE ...]   (no DATA: the demo world)
source "$(dirname "$0")/../common.sh"
source "$(dirname "$0")/method.sh"
xd_test "$@"
