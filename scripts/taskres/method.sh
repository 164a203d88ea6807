# TaskRes: the trainer, its configs per protocol and the runner task names (configs.py) whose layout these scripts share.
# No base-to-new scripts: the base and the residual are per class (the original has cross-domain and few-shot only).
TRAINER=TaskRes
CFG_XD=adam_lr2e-4_B256_ep200
TASK_XD=taskres_xd
EVAL_ONLY=0

# fs_task DATASET SEED [SHOTS] [KEY VALUE ...]: TASK_FS and CFG_FS of the original's table (train_regular.sh):
# LR 2e-4 on ImageNet (else 2e-3), RESIDUAL_SCALE 1.0 on Flowers (else 0.5), 100 epochs up to 4 shots (else 200).
fs_task() {
    local ds=$1 shots=$SHOTS given
    shift 2
    if [[ $# -gt 0 && "$1" =~ ^[0-9]+$ ]]; then shots=$1; shift; fi
    given=$(last_value DATASET.NUM_SHOTS "$@")
    shots=${given:-$shots}
    case "$ds" in
        imagenet) TASK_FS=taskres_imagenet_all CFG_FS=adam_lr2e-4_B256_ep100 ;;
        oxford_flowers) TASK_FS=taskres_flowers_all CFG_FS=adam_lr2e-3_B256_ep100 ;;
        *) TASK_FS=taskres_all CFG_FS=adam_lr2e-3_B256_ep100 ;;
    esac
    if ((shots > 4)); then TASK_FS+=_ep200 CFG_FS=${CFG_FS%_ep100}_ep200; fi
}
