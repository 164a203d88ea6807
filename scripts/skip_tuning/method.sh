# SkipTuning: the trainer, its configs per protocol and the runner task names (configs.py) whose layout these scripts share.
TRAINER=SkipTuning
CFG_B2N=vit_b16_bs4
CFG_XD=vit_b16_bs4_cross_datasets
CFG_FS=vit_b16_bs4_few_shot
TASK_B2N=skip_tuning
TASK_XD=skip_tuning_xd
TASK_FS=skip_tuning_all
EVAL_ONLY=0
