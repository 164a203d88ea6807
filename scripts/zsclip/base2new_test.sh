#!/usr/bin/env bash
# ZeroshotCLIP, base-to-new: evaluate the new classes.
# Usage: [DATA=/path/to/data] bash scripts/zsclip/base2new_test.sh DATASET SEED [KEY VALUE ...]   (no DATA: the demo world)
source "$(dirname "$0")/../common.sh"
source "$(dirname "$0")/method.sh"
b2n_test "$@"
