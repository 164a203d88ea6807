#!/usr/bin/env bash
# ZeroshotCLIP, cross-dataset / domain generalisation: evaluate DATASET.
# Usage: [DATA=/path/to/data] bash scripts/zsclip/xd_test.sh DATASET SEED [KEY VALUE ...]   (no DATA: the demo world)
source "$(dirname "$0")/../common.sh"
source "$(dirname "$0")/method.sh"
xd_test "$@"
