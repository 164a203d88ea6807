#!/usr/bin/env bash
# DyT, VTAB-1K: the 19 tasks one after the other (python parallel_runner.py --cfg dyt_vtab runs them in parallel).
# Usage: DATA=/path/to/data bash scripts/dyt/vtab_all.sh SEED MODEL.BACKBONE.NAME <ViT-B/16 in21k file> [KEY VALUE ...]
set -euo pipefail
seed=$1
shift
for task in cifar caltech101 dtd oxford_flowers102 oxford_iiit_pet svhn sun397 \
            patch_camelyon eurosat resisc45 diabetic_retinopathy \
            clevr_count clevr_dist dmlab kitti dsprites_loc dsprites_ori smallnorb_azi smallnorb_ele; do
    bash "$(dirname "$0")/vtab.sh" "vtab_${task}" "$seed" "$@"
done
