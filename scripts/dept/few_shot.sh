#!/usr/bin/env bash
# DePT (over DEPT_HOST, default coop), few-shot: train and test on all classes with SHOTS shots (default 16).
# Usage: [DATA=/path/to/data] [DEPT_HOST=coop] bash scripts/dept/few_shot.sh DATASET SEED [SHOTS] [KEY VALUE ...]   (no DATA: the demo world)
source "$(dirname "$0")/../common.sh"
source "$(dirname "$0")/method.sh"
few_shot "$@"
