#!/usr/bin/env bash
# DePT (over DEPT_HOST, default coop), cross-dataset: train on ImageNet, all classes.
# Usage: [DATA=/path/to/data] [DEPT_HOST=coop] bash scripts/dept/xd_train.sh SEED [KEY VALUE ...]   (no DATA: the demo world)
source "$(dirname "$0")/../common.sh"
source "$(dirname "$0")/method.sh"
xd_train "$@"
