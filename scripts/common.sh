# Shared by scripts/<method>/*.sh: builds the same train.py commands and output paths as
# `python parallel_runner.py` (runner/tasks.py), so the runner's tallies read these runs too.
#
# Environment: DATA (data root, required), OUTPUT (default: outputs), SHOTS (default: 16),
# LOADEP (epoch to evaluate; default: the last checkpoint the training run saved),
# PYTHON (default: python), DRY_RUN=1 (print the command instead of running it).
# Extra arguments after the positional ones are appended as KEY VALUE config overrides.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
: "${DATA:?Set DATA to your data root (see DATASETS.md), e.g. DATA=/data bash $0 ...}"
OUTPUT="${OUTPUT:-outputs}"
SHOTS="${SHOTS:-16}"
LOADEP="${LOADEP:-}"
PYTHON="${PYTHON:-python}"
XD_SOURCE="${XD_SOURCE:-imagenet}"

# configs/trainers/<TRAINER>/<cfg>.yaml, or configs/trainers/<Other>/<name>.yaml for cfg "Other/name"
cfg_file() { if [[ "$1" == */* ]]; then echo "configs/trainers/$1.yaml"; else echo "configs/trainers/${TRAINER}/$1.yaml"; fi; }

# The epoch of the newest checkpoint in a training run's output dir.
last_epoch() {
    local e
    e=$(cat "$1"/*/checkpoint 2>/dev/null | sed -n 's/^model\.pth\.tar-\([0-9]*\)$/\1/p' | sort -n | tail -1)
    if [[ -z "$e" ]]; then
        if [[ -n "${DRY_RUN:-}" ]]; then echo last; return; fi
        echo "No checkpoint under $1: run the training script first (or set LOADEP)." >&2
        exit 1
    fi
    echo "$e"
}

# launch DATASET SEED OUTPUT_DIR SUBSAMPLE CFG MODEL_DIR|"" EVAL(0/1) [KEY VALUE ...]
launch() {
    local dataset=$1 seed=$2 out=$3 subsample=$4 cfg=$5 model_dir=$6 eval=$7
    shift 7
    local cmd=(train.py --root "$DATA" --seed "$seed" --trainer "$TRAINER"
               --dataset-config-file "configs/datasets/${dataset}.yaml" --config-file "$(cfg_file "$cfg")"
               --output-dir "$out")
    if [[ -n "$model_dir" ]]; then
        cmd+=(--model-dir "$model_dir" --load-epoch "${LOADEP:-$(last_epoch "$REPO/$model_dir")}")
    fi
    if [[ "$eval" == 1 || -n "$model_dir" ]]; then cmd+=(--eval-only); fi
    cmd+=(DATASET.NUM_SHOTS 16 DATASET.SUBSAMPLE_CLASSES "$subsample" "$@")
    if [[ -n "${DRY_RUN:-}" ]]; then
        echo "python ${cmd[*]}"
    else
        cd "$REPO" && "$PYTHON" "${cmd[@]}"
    fi
}

# run_dir ROOT CFG DATASET SEED [SHOTS]  (the runner's layout: <root>/<Trainer>/<dataset>/shots<k>/<cfg>/seed<s>)
run_dir() { echo "$1/${TRAINER}/$3/shots${5:-$SHOTS}/$(basename "$2")/seed$4"; }

shots_opt() { if [[ "$SHOTS" != 16 ]]; then echo "DATASET.NUM_SHOTS $SHOTS"; fi; }

b2n_train() {  # DATASET SEED [KEY VALUE ...]
    local ds=$1 seed=$2; shift 2
    # shellcheck disable=SC2046
    launch "$ds" "$seed" "$(run_dir "$OUTPUT/$TASK_B2N/train_base" "$CFG_B2N" "$ds" "$seed")" base "$CFG_B2N" "" \
        "${EVAL_ONLY:-0}" $(shots_opt) "$@"
}

b2n_test() {  # DATASET SEED [KEY VALUE ...]
    local ds=$1 seed=$2; shift 2
    local model=""
    if [[ "${EVAL_ONLY:-0}" != 1 ]]; then model="$(run_dir "$OUTPUT/$TASK_B2N/train_base" "$CFG_B2N" "$ds" "$seed")"; fi
    # shellcheck disable=SC2046
    launch "$ds" "$seed" "$(run_dir "$OUTPUT/$TASK_B2N/test_new" "$CFG_B2N" "$ds" "$seed")" new "$CFG_B2N" "$model" 1 \
        $(shots_opt) "$@"
}

xd_train() {  # SEED [KEY VALUE ...]
    local seed=$1; shift
    # shellcheck disable=SC2046
    launch "$XD_SOURCE" "$seed" "$(run_dir "$OUTPUT/$TASK_XD" "$CFG_XD" "$XD_SOURCE" "$seed")" all "$CFG_XD" "" \
        "${EVAL_ONLY:-0}" $(shots_opt) "$@"
}

xd_test() {  # DATASET SEED [KEY VALUE ...]
    local ds=$1 seed=$2; shift 2
    local model=""
    if [[ "${EVAL_ONLY:-0}" != 1 ]]; then model="$(run_dir "$OUTPUT/$TASK_XD" "$CFG_XD" "$XD_SOURCE" "$seed")"; fi
    # shellcheck disable=SC2046
    launch "$ds" "$seed" "$(run_dir "$OUTPUT/$TASK_XD" "$CFG_XD" "$ds" "$seed")" all "$CFG_XD" "$model" 1 \
        $(shots_opt) "$@"
}

few_shot() {  # DATASET SEED [SHOTS] [KEY VALUE ...]; runs live under <task>/shot=<k>/ like the runner's shot grid
    local ds=$1 seed=$2; shift 2
    if [[ $# -gt 0 && "$1" =~ ^[0-9]+$ ]]; then SHOTS=$1; shift; fi
    if [[ "${FS_GRID:-1}" == 0 ]]; then  # a task without a shot grid (zero-shot: the shot count changes nothing)
        # shellcheck disable=SC2046
        launch "$ds" "$seed" "$(run_dir "$OUTPUT/$TASK_FS" "$CFG_FS" "$ds" "$seed")" all "$CFG_FS" "" \
            "${EVAL_ONLY:-0}" $(shots_opt) "$@"
        return
    fi
    launch "$ds" "$seed" "$(run_dir "$OUTPUT/$TASK_FS/shot=$SHOTS" "$CFG_FS" "$ds" "$seed")" all "$CFG_FS" "" \
        "${EVAL_ONLY:-0}" DATASET.NUM_SHOTS "$SHOTS" "$@"
}
