# ZeroshotCLIP: the trainer, its configs per protocol and the runner task names (configs.py) whose layout these scripts share.
TRAINER=ZeroshotCLIP
CFG_B2N=CoOp/vit_b16
CFG_XD=CoOp/vit_b16
CFG_FS=CoOp/vit_b16
TASK_B2N=zsclip
TASK_XD=zsclip_xd
TASK_FS=zsclip_all
EVAL_ONLY=1  # zero-shot: every script is an --eval-only run without a model
FS_GRID=0  # zsclip_all has no shot grid
