#!/usr/bin/env bash
# CLIP-Adapter, cross-dataset: train on ImageNet, all classes.
# Usage: [DATA=/path/to/data] bash scripts/clip_adapter/xd_train.sh SEED [KEY VALUE ...]   (no DATA: the demo world)
source "$(dirname "$0")/../common.sh"
source "$(dirname "$0")/method.sh"
xd_train "$@"
