#!/usr/bin/env bash
# DePT (over DEPT_HOST, default coop), base-to-new: evaluate the new classes with the model of base2new_train.sh.
# Usage: [DATA=/path/to/data] [DEPT_HOST=coop] bash scripts/dept/base2new_test.sh DATASET SEED [KEY VALUE ...]   (no DATA: the demo world)
source "$(dirname "$0")/../common.sh"
source "$(dirname "$0")/method.sh"
b2n_test "$@"
