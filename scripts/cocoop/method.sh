# CoCoOp: the trainer, its configs per protocol and the runner task names (configs.py) whose layout these scripts share.
TRAINER=CoCoOp
CFG_B2N=vit_b16_c4_ep10_batch1_ctxv1
CFG_XD=vit_b16_c4_ep10_batch1_ctxv1
CFG_FS=vit_b16_c4_ep10_batch1_ctxv1
TASK_B2N=cocoop
TASK_XD=cocoop_xd
TASK_FS=cocoop_all
EVAL_ONLY=0
