# KgCoOp: the trainer, its configs per protocol and the runner task names (configs.py) whose layout these scripts share.
# The tasks carry the original scripts' settings (TRAINER.COOP.W 8.0, N_CTX 4, CSC False, class token at the end).
TRAINER=KgCoOp
CFG_B2N=vit_b16_ep100_ctxv1
CFG_XD=vit_b16_ep100_ctxv1
CFG_FS=vit_b16_ep100_ctxv1
TASK_B2N=kgcoop
TASK_XD=kgcoop_xd
TASK_FS=kgcoop_all
EVAL_ONLY=0
