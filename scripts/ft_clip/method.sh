# FinetuneCLIP: the trainer, its configs per protocol and the runner task names (configs.py) whose layout these scripts share.
TRAINER=FinetuneCLIP
CFG_B2N=vit_b16_ep10_bs4
CFG_XD=vit_b16_ep10_bs4_cross_datasets
CFG_FS=vit_b16_ep10_bs4
TASK_B2N=ft_clip
TASK_XD=ft_clip_xd
TASK_FS=ft_clip_all
EVAL_ONLY=0
