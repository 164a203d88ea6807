#!/usr/bin/env bash
# PromptSRC, few-shot: train and test on all classes with SHOTS shots (default 16).
# Usage: [DATA=/path/to/data] bash scripts/promptsrc/few_shot.sh DATASET SEED [SHOTS] [KEY VALUE ...]   (no DATA: the demo world)
source "$(dirname "$0")/../common.sh"
source "$(dirname "$0")/method.sh"
few_shot "$@"
