# DePT: the trainer (the original's name for DePT over the host DEPT_HOST: coop (default), cocoop, kgcoop,
# maple), its config (the original's, for every protocol) and the runner task names (configs.py:
# <host>_dept, <host>_dept_xd, <host>_dept_all) whose layout these scripts share.
DEPT_HOST="${DEPT_HOST:-coop}"
case "$DEPT_HOST" in
    coop) TRAINER=ExtrasLinearProbeCoOp CFG=vit_b16_ep10_bs4_lr35 ;;
    cocoop) TRAINER=ExtrasLinearProbeCoCoOp CFG=vit_b16_c4_ep10_batch1_ctxv1 ;;
    kgcoop) TRAINER=ExtrasLinearProbeKgCoOp CFG=vit_b16_ep10_ctxv1_bs4_lr35 ;;
    maple) TRAINER=ExtrasLinearProbeMaPLe CFG=vit_b16_c2_ep10_batch4_2ctx ;;
    *) echo "DEPT_HOST must be one of coop, cocoop, kgcoop, maple (got '$DEPT_HOST')." >&2; exit 2 ;;
esac
CFG_B2N=$CFG
CFG_XD=$CFG
CFG_FS=$CFG
TASK_B2N=${DEPT_HOST}_dept
TASK_XD=${DEPT_HOST}_dept_xd
TASK_FS=${DEPT_HOST}_dept_all
EVAL_ONLY=0
