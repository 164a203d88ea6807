#!/usr/bin/env bash
# DePT (over DEPT_HOST, default coop), base-to-new: train on the base classes (its closing test gives the base accuracy).
# Usage: [DATA=/path/to/data] [DEPT_HOST=coop] bash scripts/dept/base2new_train.sh DATASET SEED [KEY VALUE ...]   (no DATA: the demo world)
source "$(dirname "$0")/../common.sh"
source "$(dirname "$0")/method.sh"
b2n_train "$@"
