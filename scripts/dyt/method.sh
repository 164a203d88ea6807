# DyT: the trainer, its VTAB-1K config and the runner task (configs.py dyt_vtab) whose layout these scripts share.
# VTAB-1K trains on all 1000 images of train800val200 (SHOTS=-1) and tests on test.txt; no shot grid.
TRAINER=DyT
CFG_FS=vit_b16_vtab
TASK_FS=dyt_vtab
SHOTS=-1
FS_GRID=0
EVAL_ONLY=0
