#!/usr/bin/env bash
# DyT, VTAB-1K: train one task on train800val200 (100 epochs, train_vtab.sh's settings), test on test.txt.
# Usage: DATA=/path/to/data bash scripts/dyt/vtab.sh vtab_<task> SEED MODEL.BACKBONE.NAME <ViT-B/16 in21k file> [KEY VALUE ...]
source "$(dirname "$0")/../common.sh"
source "$(dirname "$0")/method.sh"
few_shot "$@"
