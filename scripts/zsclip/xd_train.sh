#!/usr/bin/env bash
# ZeroshotCLIP, cross-dataset: evaluate on ImageNet, all classes.
# Usage: [DATA=/path/to/data] bash scripts/zsclip/xd_train.sh SEED [KEY VALUE ...]   (no DATA: the demo world)
source "$(dirname "$0")/../common.sh"
source "$(dirname "$0")/method.sh"
xd_train "$@"
