# CLIP-Adapter: the trainer, its configs per protocol and the runner task names (configs.py) whose layout these scripts share.
# The released file ships no config; its README says to run CoOp's commands, so these are CoOp's RN50 configs.
TRAINER=CLIP_Adapter
CFG_B2N=CoOp/rn50
CFG_XD=CoOp/rn50_ep50
TASK_B2N=clip_adapter
TASK_XD=clip_adapter_xd
EVAL_ONLY=0

# fs_task DATASET SEED [SHOTS] [KEY VALUE ...]: TASK_FS and CFG_FS of CoOp's table: 50 epochs for 1 shot and on
# ImageNet, 100 for 2/4 shots, 200 for 8/16.
fs_task() {
    local ds=$1 shots=$SHOTS given
    shift 2
    if [[ $# -gt 0 && "$1" =~ ^[0-9]+$ ]]; then shots=$1; shift; fi
    given=$(last_value DATASET.NUM_SHOTS "$@")
    shots=${given:-$shots}
    if [[ "$ds" == imagenet ]]; then TASK_FS=clip_adapter_imagenet_all CFG_FS=CoOp/rn50_ep50
    elif ((shots <= 1)); then TASK_FS=clip_adapter_all CFG_FS=CoOp/rn50_ep50
    elif ((shots <= 4)); then TASK_FS=clip_adapter_all_ep100 CFG_FS=CoOp/rn50_ep100
    else TASK_FS=clip_adapter_all_ep200 CFG_FS=CoOp/rn50
    fi
}
