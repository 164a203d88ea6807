# CoOp: the trainer, its configs per protocol and the runner task names (configs.py) whose layout these scripts share.
TRAINER=CoOp
CFG_B2N=vit_b16_ep100
CFG_XD=vit_b16_ep100
CFG_FS=vit_b16_ep100
TASK_B2N=coop
TASK_XD=coop_xd
TASK_FS=coop_all
EVAL_ONLY=0
