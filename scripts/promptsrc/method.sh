# PromptSRC: the trainer, its configs per protocol and the runner task names (configs.py) whose layout these scripts share.
# The original's configs: base-to-new, cross-dataset (the ep20 file; the original's xd scripts name an ep5 file that
# does not exist) and few-shot (GPA 30 / 30 as shipped; add TRAINER.PROMPTSRC.GPA_MEAN 45 TRAINER.PROMPTSRC.GPA_STD 5
# for Cars, Flowers, Aircraft, DTD and EuroSAT, as its comments say).
TRAINER=PromptSRC
CFG_B2N=vit_b16_c2_ep20_batch4_4+4ctx
CFG_XD=vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets
CFG_FS=vit_b16_c2_ep50_batch4_4+4ctx_few_shot
TASK_B2N=promptsrc
TASK_XD=promptsrc_xd
TASK_FS=promptsrc_all
EVAL_ONLY=0
