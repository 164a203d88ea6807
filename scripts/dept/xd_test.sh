#!/usr/bin/env bash
# DePT (over DEPT_HOST, default coop), cross-dataset / domain generalisation: evaluate DATASET with the model of xd_train.sh.
# Usage: [DATA=/path/to/data] [DEPT_HOST=coop] bash scripts/dept/xd_test.sh DATASET SEED [KEY VALUE ...]   (no DATA: the demo world)
source "$(dirname "$0")/../common.sh"
source "$(dirname "$0")/method.sh"
xd_test "$@"
