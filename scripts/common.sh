# Shared by scripts/<method>/*.sh: builds the same train.py runs and output paths as
# `python parallel_runner.py` (runner/tasks.py), so the runner's tallies read these runs too.
#
# Data root: $DATA. Without it (and without data.root in configs.py) a script runs on the demo
# world, as `python parallel_runner.py --cfg TASK` does: the task's demo settings in configs.py
# (demo dataset, demo CLIP, demo trainer config, outputs under outputs/demo), resolved by
# `python -m runner.script_settings`; the first line of output says so.
#
# Environment: DATA (data root), OUTPUT (default: outputs; demo: the demo output root), SHOTS (default: 16),
# LOADEP (epoch to evaluate; default: the last checkpoint the training run saved), XD_SOURCE (default:
# imagenet; demo: the demo source), PYTHON (default: python), DRY_RUN=1 (print the command instead of running it).
# Extra arguments after the positional ones are appended as KEY VALUE config overrides; a
# DATASET.NUM_SHOTS among them replaces SHOTS (command and shots<k> folder alike).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SHOTS="${SHOTS:-16}"
LOADEP="${LOADEP:-}"
PYTHON="${PYTHON:-python}"

# use_world TASK CFG DATASET|"" [KEY VALUE ...]: the settings this run uses. Sets ROOT_ARGS, DS (dataset),
# XD_SRC, RUN_CFG, WORLD_OPTS (the task's opts), OUT_ROOT and DEMO_NOTE ('' unless on the demo world).
use_world() {
    local task=$1 cfg=$2 asked=$3
    shift 3
    local settings  # WORLD_DEMO, WORLD_ROOT, WORLD_DATASET, WORLD_XD_SOURCE, WORLD_CFG, WORLD_OPTS, WORLD_OUTPUT, WORLD_NOTE
    settings=$(cd "$REPO" && "$PYTHON" -m runner.script_settings "$task" --dataset "$asked" \
               --xd-source "${XD_SOURCE:-}" -- "$@")
    eval "$settings"
    if [[ -n "${DATA:-}" ]]; then  # $DATA as given; the task's opts (WORLD_OPTS) apply, as in the runner
        ROOT_ARGS=(--root "$DATA") DS=$asked XD_SRC=${XD_SOURCE:-imagenet} RUN_CFG=$cfg
        OUT_ROOT=${OUTPUT:-outputs} DEMO_NOTE=""
        return
    fi
    if [[ "$WORLD_DEMO" == 1 ]]; then ROOT_ARGS=(); else ROOT_ARGS=(--root "$WORLD_ROOT"); fi
    DS=$WORLD_DATASET XD_SRC=$WORLD_XD_SOURCE RUN_CFG=$WORLD_CFG OUT_ROOT=${OUTPUT:-$WORLD_OUTPUT} DEMO_NOTE=$WORLD_NOTE
}

# The value of the last KEY in a KEY VALUE list (later ones win in yacs), or "".
last_value() {
    local key=$1 value=""
    shift
    while [[ $# -ge 2 ]]; do
        if [[ "$1" == "$key" ]]; then value=$2; fi
        shift 2
    done
    echo "$value"
}

# The shot count a run with these extra KEY VALUE opts uses.
shots_used() { local k; k=$(last_value DATASET.NUM_SHOTS "${WORLD_OPTS[@]}" "$@"); echo "${k:-$SHOTS}"; }

# configs/trainers/<TRAINER>/<cfg>.yaml, or configs/trainers/<Other>/<name>.yaml for cfg "Other/name"
cfg_file() { if [[ "$1" == */* ]]; then echo "configs/trainers/$1.yaml"; else echo "configs/trainers/${TRAINER}/$1.yaml"; fi; }

# The epoch of the newest checkpoint in a training run's output dir (relative to the repository, like train.py's).
last_epoch() {
    local e
    e=$(cd "$REPO" && cat "$1"/*/checkpoint 2>/dev/null | sed -n 's/^model\.pth\.tar-\([0-9]*\)$/\1/p' | sort -n | tail -1)
    if [[ -z "$e" ]]; then
        if [[ -n "${DRY_RUN:-}" ]]; then echo last; return; fi
        echo "No checkpoint under $1: run the training script first (or set LOADEP)." >&2
        exit 1
    fi
    echo "$e"
}

# launch DATASET SEED OUTPUT_DIR SUBSAMPLE MODEL_DIR|"" EVAL(0/1) [KEY VALUE ...]
launch() {
    local dataset=$1 seed=$2 out=$3 subsample=$4 model_dir=$5 eval=$6
    shift 6
    if [[ -n "$DEMO_NOTE" ]]; then
        echo "No DATA set: running on the demo world ($DEMO_NOTE); outputs under $out" >&2
    fi
    local cmd=(train.py "${ROOT_ARGS[@]}" --seed "$seed" --trainer "$TRAINER"
               --dataset-config-file "configs/datasets/${dataset}.yaml" --config-file "$(cfg_file "$RUN_CFG")"
               --output-dir "$out")
    if [[ -n "$model_dir" ]]; then
        cmd+=(--model-dir "$model_dir" --load-epoch "${LOADEP:-$(last_epoch "$model_dir")}")
    fi
    if [[ "$eval" == 1 || -n "$model_dir" ]]; then cmd+=(--eval-only); fi
    # One DATASET.NUM_SHOTS: SHOTS unless the opts set it themselves.
    if [[ -z "$(last_value DATASET.NUM_SHOTS "${WORLD_OPTS[@]}" "$@")" ]]; then cmd+=(DATASET.NUM_SHOTS "$SHOTS"); fi
    cmd+=(DATASET.SUBSAMPLE_CLASSES "$subsample" "${WORLD_OPTS[@]}" "$@")
    if [[ -n "${DRY_RUN:-}" ]]; then
        echo "python ${cmd[*]}"
    else
        cd "$REPO" && "$PYTHON" "${cmd[@]}"
    fi
}

# run_dir ROOT DATASET SEED SHOTS  (the runner's layout: <root>/<Trainer>/<dataset>/shots<k>/<cfg>/seed<s>)
run_dir() { echo "$1/${TRAINER}/$2/shots$4/$(basename "$RUN_CFG")/seed$3"; }

b2n_train() {  # DATASET SEED [KEY VALUE ...]
    local seed=$2
    use_world "$TASK_B2N" "$CFG_B2N" "$1" "${@:3}"
    shift 2
    launch "$DS" "$seed" "$(run_dir "$OUT_ROOT/$TASK_B2N/train_base" "$DS" "$seed" "$(shots_used "$@")")" base "" \
        "${EVAL_ONLY:-0}" "$@"
}

b2n_test() {  # DATASET SEED [KEY VALUE ...]
    local seed=$2 model="" shots
    use_world "$TASK_B2N" "$CFG_B2N" "$1" "${@:3}"
    shift 2
    shots=$(shots_used "$@")
    if [[ "${EVAL_ONLY:-0}" != 1 ]]; then model="$(run_dir "$OUT_ROOT/$TASK_B2N/train_base" "$DS" "$seed" "$shots")"; fi
    launch "$DS" "$seed" "$(run_dir "$OUT_ROOT/$TASK_B2N/test_new" "$DS" "$seed" "$shots")" new "$model" 1 "$@"
}

xd_train() {  # SEED [KEY VALUE ...]
    local seed=$1
    use_world "$TASK_XD" "$CFG_XD" "" "${@:2}"
    shift
    launch "$XD_SRC" "$seed" "$(run_dir "$OUT_ROOT/$TASK_XD" "$XD_SRC" "$seed" "$(shots_used "$@")")" all "" \
        "${EVAL_ONLY:-0}" "$@"
}

xd_test() {  # DATASET SEED [KEY VALUE ...]
    local seed=$2 model="" shots
    use_world "$TASK_XD" "$CFG_XD" "$1" "${@:3}"
    shift 2
    shots=$(shots_used "$@")
    if [[ "${EVAL_ONLY:-0}" != 1 ]]; then model="$(run_dir "$OUT_ROOT/$TASK_XD" "$XD_SRC" "$seed" "$shots")"; fi
    launch "$DS" "$seed" "$(run_dir "$OUT_ROOT/$TASK_XD" "$DS" "$seed" "$shots")" all "$model" 1 "$@"
}

few_shot() {  # DATASET SEED [SHOTS] [KEY VALUE ...]; runs live under <task>/shot=<k>/ like the runner's shot grid
    local ds=$1 seed=$2 root shots
    shift 2
    if [[ $# -gt 0 && "$1" =~ ^[0-9]+$ ]]; then SHOTS=$1; shift; fi
    use_world "$TASK_FS" "$CFG_FS" "$ds" "$@"
    shots=$(shots_used "$@")
    root="$OUT_ROOT/$TASK_FS/shot=$shots"
    if [[ "${FS_GRID:-1}" == 0 ]]; then root="$OUT_ROOT/$TASK_FS"; fi  # a task without a shot grid (zero-shot)
    launch "$DS" "$seed" "$(run_dir "$root" "$DS" "$seed" "$shots")" all "" "${EVAL_ONLY:-0}" "$@"
}
