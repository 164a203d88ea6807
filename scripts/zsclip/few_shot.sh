#!/usr/bin/env bash
# ZeroshotCLIP, few-shot: evaluate on all classes.
# Usage: [DATA=/path/to/data] bash scripts/zsclip/few_shot.sh DATASET SEED [KEY VALUE ...]   (no DATA: the demo world)
source "$(dirname "$0")/../common.sh"
source "$(dirname "$0")/method.sh"
few_shot "$@"
