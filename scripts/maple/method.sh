# MaPLe: the trainer, its configs per protocol and the runner task names (configs.py) whose layout these scripts share.
TRAINER=MaPLe
CFG_B2N=vit_b16_c2_ep5_batch4_2ctx
CFG_XD=vit_b16_c2_ep5_batch4_2ctx_cross_datasets
CFG_FS=vit_b16_c2_ep5_batch4_2ctx
TASK_B2N=maple
TASK_XD=maple_xd
TASK_FS=maple_all
EVAL_ONLY=0
