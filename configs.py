"""Sweeps for `python parallel_runner.py`: edit this file (or keep your own copy and pass --configs PATH).

- `base` holds the defaults of every task.
- A task is a module-level dict with a `train` entry, deep-merged over `base` (dicts merge, lists
  and scalars replace). Run one with `python parallel_runner.py --cfg NAME`.
- `pipeline` lists `{gpu_ids, tasks}`; entries run concurrently, each on its own GPUs. Without
  CUDA, or with `gpu_ids=[]`, jobs run on `runner.cpu_workers` CPU slots.

Unknown keys and task names are errors before anything starts. With no data root configured
(`data.root` None and $DATA unset) tasks run on the generated demo world with the small settings of `demo`.
"""

base = dict(
    data=dict(
        root=None,  # your data root (DATASETS.md); None: $DATA if set, else the demo world
        datasets_base_to_new=['imagenet', 'sun397', 'stanford_cars', 'oxford_flowers', 'food101', 'ucf101',
                              'caltech101', 'fgvc_aircraft', 'dtd', 'oxford_pets', 'eurosat'],  # big first
        datasets_cross_dataset=['caltech101', 'oxford_pets', 'stanford_cars', 'oxford_flowers', 'food101',
                                'fgvc_aircraft', 'sun397', 'dtd', 'eurosat', 'ucf101',
                                'imagenetv2', 'imagenet_sketch', 'imagenet_a', 'imagenet_r'],
        datasets_all=['imagenet', 'sun397', 'stanford_cars', 'oxford_flowers', 'food101', 'ucf101',
                      'caltech101', 'fgvc_aircraft', 'dtd', 'oxford_pets', 'eurosat'],
        xd_source='imagenet',  # xd: the dataset trained on (all classes)
        dg_datasets=['imagenetv2', 'imagenet_sketch', 'imagenet_a', 'imagenet_r'],  # xd targets averaged as average_dg
        # Summary rows of the accuracy tables (b2n, all): {label: [datasets]}, each the mean over its
        # datasets, then `average_groups`, the mean of these rows (VTAB's group-mean average).
        groups={},
    ),

    # Summary mail: off while host is empty. The password is read from the environment variable
    # named by password_env, never from this file.
    mail=dict(
        host='',
        port=465,
        security='ssl',  # ssl | starttls | none
        username='',
        password_env='RUNNER_MAIL_PASSWORD',
        sender='',  # defaults to username
        to='',
    ),

    train=dict(
        mode='b2n',  # b2n | xd | all
        trainer='',
        cfg='',  # configs/trainers/<trainer>/<cfg>.yaml; 'Other/name' = configs/trainers/Other/name.yaml
        seeds=[1, 2, 3],
        shots=16,
        loadep=-1,  # epoch evaluated after training; -1: the last checkpoint the training run saved
        eval_only=False,  # True for zero-shot methods: every job is an --eval-only run without a model
        load_from='',  # copy <load_from>/<trainer> into the task's output root before starting
        opts=[],  # extra KEY VALUE tokens for every run
    ),

    grid_search=dict(
        plot='line',
        mode='sequential',  # sequential: zip the value lists; grid: every combination
        params=[],  # [dict(name='CFG.KEY', alias='short', values=[...]), ...]
    ),

    output=dict(
        root='outputs',  # runs: <root>/<task>/...; the ledger is <root>/runner_ledger.sqlite
        result='results/acc',
        cost='results/cost',
        remove_dirs=[],  # 'root' / 'result' / 'cost': delete the task's folder first (nothing is deleted otherwise)
    ),

    runner=dict(
        launcher='local',  # local | slurm
        retries=1,  # a failed job is retried this many times (never after a usage error, exit status 2)
        jobs_per_gpu=1,
        cpu_workers=None,  # CPU slots when no GPU is used; None: min(2, cores)
        script='train.py',
        slurm=dict(
            cluster='slurm',  # 'local' runs the submitit path on this machine
            partition='',
            gpus_per_node=1,
            cpus_per_task=8,
            mem_gb=None,
            timeout_min=1440,
            max_parallel=32,  # jobs in the queue at once
            additional={},  # passed as slurm_additional_parameters
        ),
    ),

    # What changes when no data root is configured: the demo world and small CPU settings.
    demo=dict(
        datasets_base_to_new=['demo_shapes', 'demo_symbols'],
        datasets_cross_dataset=['demo_symbols', 'demo_shapes_sketch'],
        datasets_all=['demo_shapes', 'demo_symbols'],
        xd_source='demo_shapes',
        dg_datasets=['demo_shapes_sketch'],
        seeds=[1, 2],
        cfg=None,  # a trainer config to use instead of train.cfg
        opts=['MODEL.BACKBONE.NAME', 'demo', 'DATALOADER.NUM_WORKERS', '0'],
        trainer_opts=[],  # per task: method-specific small settings
        output=dict(root='outputs/demo', result='results/demo/acc', cost='results/demo/cost'),
    ),
)

#####################################################
# Skip Tuning

_skip_demo = dict(cfg='SkipTuning/demo')  # demo CLIP, 32 px, 10 short epochs (configs/trainers/SkipTuning/demo.yaml)

# Base-to-new generalization
skip_tuning = dict(
    train=dict(trainer='SkipTuning', cfg='vit_b16_bs4'),
    demo=_skip_demo,
)

# Cross-dataset transfer and domain generalization
skip_tuning_xd = dict(
    train=dict(mode='xd', trainer='SkipTuning', cfg='vit_b16_bs4_cross_datasets'),
    demo=_skip_demo,
)

# Few-shot learning
skip_tuning_all = dict(
    train=dict(mode='all', trainer='SkipTuning', cfg='vit_b16_bs4_few_shot'),
    grid_search=dict(params=[dict(name='DATASET.NUM_SHOTS', alias='shot', values=[1, 2, 4, 8, 16])]),
    demo=_skip_demo,
)

# Ablations
skip_tuning_layer = dict(
    train=dict(trainer='SkipTuning', cfg='vit_b16_bs4'),
    grid_search=dict(params=[dict(name='TRAINER.SKIP.START_LAYER', alias='layer', values=[2, 4, 6, 8, 10])]),
)

skip_tuning_top = dict(
    train=dict(trainer='SkipTuning', cfg='vit_b16_bs4'),
    grid_search=dict(params=[dict(name='TRAINER.SKIP.TOP_RATIO', alias='top', values=[1.0, 0.9, 0.7, 0.5, 0.3, 0.1])]),
)

skip_tuning_lambda = dict(
    train=dict(trainer='SkipTuning', cfg='vit_b16_bs4'),
    grid_search=dict(params=[dict(name='TRAINER.SKIP.LAMBDA', alias='lambda',
                                  values=[0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0])]),
)

#####################################################
# Baselines

_shot_grid = dict(params=[dict(name='DATASET.NUM_SHOTS', alias='shot', values=[1, 2, 4, 8, 16])])
_ft_demo = dict(cfg='FinetuneCLIP/demo')

ft_clip = dict(train=dict(trainer='FinetuneCLIP', cfg='vit_b16_ep10_bs4'), demo=_ft_demo)
ft_clip_xd = dict(train=dict(mode='xd', trainer='FinetuneCLIP', cfg='vit_b16_ep10_bs4_cross_datasets'), demo=_ft_demo)
ft_clip_all = dict(train=dict(mode='all', trainer='FinetuneCLIP', cfg='vit_b16_ep10_bs4'), grid_search=_shot_grid,
                   demo=_ft_demo)

coop = dict(train=dict(trainer='CoOp', cfg='vit_b16_ep100'), demo=dict(cfg='CoOp/demo'))
coop_xd = dict(train=dict(mode='xd', trainer='CoOp', cfg='vit_b16_ep100'), demo=dict(cfg='CoOp/demo'))
coop_all = dict(train=dict(mode='all', trainer='CoOp', cfg='vit_b16_ep100'), grid_search=_shot_grid,
                demo=dict(cfg='CoOp/demo'))

# CoCoOp: the paper's config (vit_b16_c4_ep10_batch1_ctxv1) for every protocol, as the original scripts.
_cocoop_demo = dict(cfg='CoCoOp/demo')
cocoop = dict(train=dict(trainer='CoCoOp', cfg='vit_b16_c4_ep10_batch1_ctxv1'), demo=_cocoop_demo)
cocoop_xd = dict(train=dict(mode='xd', trainer='CoCoOp', cfg='vit_b16_c4_ep10_batch1_ctxv1'), demo=_cocoop_demo)
cocoop_all = dict(train=dict(mode='all', trainer='CoCoOp', cfg='vit_b16_c4_ep10_batch1_ctxv1'), grid_search=_shot_grid,
                  demo=_cocoop_demo)

# KgCoOp: the original scripts' settings (TRAINER.COOP.W 8.0: the key's default is 1.0).
_kgcoop_opts = ['TRAINER.COOP.N_CTX', 4, 'TRAINER.COOP.CSC', False, 'TRAINER.COOP.W', 8.0,
                'TRAINER.COOP.CLASS_TOKEN_POSITION', 'end']
kgcoop = dict(train=dict(trainer='KgCoOp', cfg='vit_b16_ep100_ctxv1', opts=_kgcoop_opts), demo=dict(cfg='KgCoOp/demo'))
kgcoop_xd = dict(train=dict(mode='xd', trainer='KgCoOp', cfg='vit_b16_ep100_ctxv1', opts=_kgcoop_opts),
                 demo=dict(cfg='KgCoOp/demo'))
kgcoop_all = dict(train=dict(mode='all', trainer='KgCoOp', cfg='vit_b16_ep100_ctxv1', opts=_kgcoop_opts),
                  grid_search=_shot_grid, demo=dict(cfg='KgCoOp/demo'))

# Zero-shot CLIP: evaluation only (base and new classes, xd targets, all classes).
zsclip = dict(train=dict(trainer='ZeroshotCLIP', cfg='CoOp/vit_b16', eval_only=True), demo=dict(cfg='CoOp/demo'))
zsclip_xd = dict(train=dict(mode='xd', trainer='ZeroshotCLIP', cfg='CoOp/vit_b16', eval_only=True),
                 demo=dict(cfg='CoOp/demo'))
zsclip_all = dict(train=dict(mode='all', trainer='ZeroshotCLIP', cfg='CoOp/vit_b16', eval_only=True),
                  demo=dict(cfg='CoOp/demo'))

#####################################################

pipeline = [
    dict(gpu_ids=[0], tasks=['skip_tuning', 'skip_tuning_xd', 'skip_tuning_all']),
]

# ---- MaPLe ----
# The original's configs: base-to-new (and few-shot, which the original does not run) with
# vit_b16_c2_ep5_batch4_2ctx, cross-dataset / DG with its _cross_datasets variant (depth 3, 2 epochs).
_maple_demo = dict(cfg='MaPLe/demo')
maple = dict(train=dict(trainer='MaPLe', cfg='vit_b16_c2_ep5_batch4_2ctx'), demo=_maple_demo)
maple_xd = dict(train=dict(mode='xd', trainer='MaPLe', cfg='vit_b16_c2_ep5_batch4_2ctx_cross_datasets'), demo=_maple_demo)
maple_all = dict(train=dict(mode='all', trainer='MaPLe', cfg='vit_b16_c2_ep5_batch4_2ctx'),
                 grid_search=dict(params=[dict(name='DATASET.NUM_SHOTS', alias='shot', values=[1, 2, 4, 8, 16])]),
                 demo=_maple_demo)

# ---- TaskRes ----
# The original's scripts (train_regular.sh, test_dg.sh): RN50, Adam, batch 256, RESIDUAL_SCALE 0.5 (Flowers: 1.0),
# LR 2e-3 (ImageNet: 2e-4), 100 epochs for 1/2/4 shots and 200 for 8/16 (configs adam_lr2e-{3,4}_B256_ep{100,200}):
# one task per row of that table. TaskRes* (enhanced base): add to a task's opts
# 'TRAINER.TaskRes.ENHANCED_BASE', 'strong_base/{dataset}/rn50_{shots}shots/model.pth.tar' (the original's files).
# The base and residual are per class: TaskRes has no base-to-new protocol (scripts/taskres has none either).
_taskres_demo = dict(cfg='TaskRes/demo')
_taskres_opts = ['TRAINER.TaskRes.RESIDUAL_SCALE', 0.5]
_taskres_datasets = ['sun397', 'stanford_cars', 'food101', 'ucf101', 'caltech101', 'fgvc_aircraft', 'dtd',
                     'oxford_pets', 'eurosat']
_shots_1_4 = dict(params=[dict(name='DATASET.NUM_SHOTS', alias='shot', values=[1, 2, 4])])
_shots_8_16 = dict(params=[dict(name='DATASET.NUM_SHOTS', alias='shot', values=[8, 16])])


def _taskres(cfg: str, grid: dict, datasets: list, opts: list = _taskres_opts) -> dict:
    return dict(train=dict(mode='all', trainer='TaskRes', cfg=cfg, opts=opts), data=dict(datasets_all=datasets),
                grid_search=grid, demo=_taskres_demo)


taskres_all = _taskres('adam_lr2e-3_B256_ep100', _shots_1_4, _taskres_datasets)
taskres_all_ep200 = _taskres('adam_lr2e-3_B256_ep200', _shots_8_16, _taskres_datasets)
taskres_flowers_all = _taskres('adam_lr2e-3_B256_ep100', _shots_1_4, ['oxford_flowers'],
                               ['TRAINER.TaskRes.RESIDUAL_SCALE', 1.0])
taskres_flowers_all_ep200 = _taskres('adam_lr2e-3_B256_ep200', _shots_8_16, ['oxford_flowers'],
                                     ['TRAINER.TaskRes.RESIDUAL_SCALE', 1.0])
taskres_imagenet_all = _taskres('adam_lr2e-4_B256_ep100', _shots_1_4, ['imagenet'])
taskres_imagenet_all_ep200 = _taskres('adam_lr2e-4_B256_ep200', _shots_8_16, ['imagenet'])
# Domain generalisation: the 16-shot ImageNet model evaluated on its four variants (the checkpoint holds the base).
taskres_xd = dict(train=dict(mode='xd', trainer='TaskRes', cfg='adam_lr2e-4_B256_ep200', opts=_taskres_opts),
                  data=dict(datasets_cross_dataset=['imagenetv2', 'imagenet_sketch', 'imagenet_a', 'imagenet_r']),
                  demo=_taskres_demo)

# ---- CLIP-Adapter ----
# The released file ships no config and says to run CoOp's commands: CoOp's RN50 configs, SGD LR 0.002, batch 32,
# 50 epochs for 1 shot (and every ImageNet run), 100 for 2/4 shots, 200 for 8/16: one task per row.
# Base-to-new and cross-dataset use the 16-shot setting (CoOp/rn50; ImageNet source: rn50_ep50).
_adapter_demo = dict(cfg='CLIP_Adapter/demo')
_adapter_datasets = [d for d in base['data']['datasets_all'] if d != 'imagenet']


def _adapter(cfg: str, shots: list, datasets: list, mode: str = 'all') -> dict:
    return dict(train=dict(mode=mode, trainer='CLIP_Adapter', cfg=cfg), data=dict(datasets_all=datasets),
                grid_search=dict(params=[dict(name='DATASET.NUM_SHOTS', alias='shot', values=shots)]),
                demo=_adapter_demo)


clip_adapter = dict(train=dict(trainer='CLIP_Adapter', cfg='CoOp/rn50'), demo=_adapter_demo)
clip_adapter_xd = dict(train=dict(mode='xd', trainer='CLIP_Adapter', cfg='CoOp/rn50_ep50'), demo=_adapter_demo)
clip_adapter_all = _adapter('CoOp/rn50_ep50', [1], _adapter_datasets)
clip_adapter_all_ep100 = _adapter('CoOp/rn50_ep100', [2, 4], _adapter_datasets)
clip_adapter_all_ep200 = _adapter('CoOp/rn50', [8, 16], _adapter_datasets)
clip_adapter_imagenet_all = _adapter('CoOp/rn50_ep50', [1, 2, 4, 8, 16], ['imagenet'])

# ---- DyT ----
# Dynamic Tuning on VTAB-1K (train_vtab.sh): one run per task on train800val200, tested on test.txt.
# MODEL.BACKBONE.NAME: the original Google ImageNet-21k ViT-B/16 weights (timm
# vit_base_patch16_224.orig_in21k, file jx_vit_base_patch16_224_in21k-e5005f0a.pth); set your path.
# The original never seeds (seeds=[1] here; add seeds for a spread). shots=-1: all 1000 images.
_dyt_backbone = ['MODEL.BACKBONE.NAME', 'weights/jx_vit_base_patch16_224_in21k-e5005f0a.pth']
_vtab_natural = ['vtab_cifar', 'vtab_caltech101', 'vtab_dtd', 'vtab_oxford_flowers102', 'vtab_oxford_iiit_pet',
                 'vtab_svhn', 'vtab_sun397']
_vtab_specialized = ['vtab_patch_camelyon', 'vtab_eurosat', 'vtab_resisc45', 'vtab_diabetic_retinopathy']
_vtab_structured = ['vtab_clevr_count', 'vtab_clevr_dist', 'vtab_dmlab', 'vtab_kitti', 'vtab_dsprites_loc',
                    'vtab_dsprites_ori', 'vtab_smallnorb_azi', 'vtab_smallnorb_ele']

# Demo mode: the demo CLIP's image tower as a timm ViT (demo/vit.py), 32 px, 10 short epochs.
_dyt_demo = dict(cfg='DyT/demo')
_vtab_groups = dict(natural=_vtab_natural, specialized=_vtab_specialized, structured=_vtab_structured)

# The tallies: per task the last-epoch acc_pct and the original's best_acc_pct (best test accuracy over
# epochs), the three group means, `average` (19-task mean) and `average_groups` (the papers' average).
dyt_vtab = dict(
    data=dict(datasets_all=_vtab_natural + _vtab_specialized + _vtab_structured, groups=_vtab_groups),
    train=dict(mode='all', trainer='DyT', cfg='vit_b16_vtab', seeds=[1], shots=-1, opts=_dyt_backbone),
    demo=_dyt_demo,
)

# A few-task smoke run of the same recipe (one task per VTAB group, 10 epochs).
dyt_vtab_smoke = dict(
    data=dict(datasets_all=['vtab_cifar', 'vtab_eurosat', 'vtab_dsprites_loc'], groups=_vtab_groups),
    train=dict(mode='all', trainer='DyT', cfg='vit_b16_vtab', seeds=[1], shots=-1,
               opts=_dyt_backbone + ['OPTIM.MAX_EPOCH', '10', 'OPTIM.WARMUP_EPOCH', '1']),
    demo=_dyt_demo,
)

# ---- PromptSRC ----
# The original's configs: base-to-new (GPA mean 15, std 1), cross-dataset / DG (depth 3, GPA 6 / 10) and
# few-shot (50 epochs, GPA 30 / 30 as the file ships; its comments give 45 / 5 for five datasets: the task
# promptsrc_all_gpa45 runs those five with that setting).
_promptsrc_demo = dict(cfg='PromptSRC/demo')
promptsrc = dict(train=dict(trainer='PromptSRC', cfg='vit_b16_c2_ep20_batch4_4+4ctx'), demo=_promptsrc_demo)
promptsrc_xd = dict(train=dict(mode='xd', trainer='PromptSRC', cfg='vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets'),
                    demo=_promptsrc_demo)
promptsrc_all = dict(train=dict(mode='all', trainer='PromptSRC', cfg='vit_b16_c2_ep50_batch4_4+4ctx_few_shot'),
                     grid_search=_shot_grid, demo=_promptsrc_demo)
promptsrc_all_gpa45 = dict(
    data=dict(datasets_all=['stanford_cars', 'oxford_flowers', 'fgvc_aircraft', 'dtd', 'eurosat']),
    train=dict(mode='all', trainer='PromptSRC', cfg='vit_b16_c2_ep50_batch4_4+4ctx_few_shot',
               opts=['TRAINER.PROMPTSRC.GPA_MEAN', 45, 'TRAINER.PROMPTSRC.GPA_STD', 5]),
    grid_search=_shot_grid, demo=_promptsrc_demo)

# ---- DePT ----
# DePT over each host, with the original's trainer names and configs (its configs.py defines the base-to-new
# tasks coop_dept, cocoop_dept, kgcoop_dept, maple_dept). The cross-dataset tasks train on ImageNet (all
# classes: the CAT head applies, by the original's rule) and fuse the heads on the ImageNet-family targets
# only. The few-shot tasks are ours: the head trains and tests on all classes (TRAINER.DEPT.BASE_MODE always).
# maple_dept* need the MaPLe trainer (ExtrasLinearProbeMaPLe says so until it is registered).
_dept_fs_opts = ['TRAINER.DEPT.BASE_MODE', 'always']
_dept_demo = dict(cfg='ExtrasLinearProbeCoOp/demo')  # sets every host's precision key to fp32
coop_dept = dict(train=dict(trainer='ExtrasLinearProbeCoOp', cfg='vit_b16_ep10_bs4_lr35'), demo=_dept_demo)
coop_dept_xd = dict(train=dict(mode='xd', trainer='ExtrasLinearProbeCoOp', cfg='vit_b16_ep10_bs4_lr35'),
                    demo=_dept_demo)
coop_dept_all = dict(train=dict(mode='all', trainer='ExtrasLinearProbeCoOp', cfg='vit_b16_ep10_bs4_lr35',
                                opts=_dept_fs_opts), grid_search=_shot_grid, demo=_dept_demo)
cocoop_dept = dict(train=dict(trainer='ExtrasLinearProbeCoCoOp', cfg='vit_b16_c4_ep10_batch1_ctxv1'), demo=_dept_demo)
cocoop_dept_xd = dict(train=dict(mode='xd', trainer='ExtrasLinearProbeCoCoOp', cfg='vit_b16_c4_ep10_batch1_ctxv1'),
                      demo=_dept_demo)
cocoop_dept_all = dict(train=dict(mode='all', trainer='ExtrasLinearProbeCoCoOp', cfg='vit_b16_c4_ep10_batch1_ctxv1',
                                  opts=_dept_fs_opts), grid_search=_shot_grid, demo=_dept_demo)
kgcoop_dept = dict(train=dict(trainer='ExtrasLinearProbeKgCoOp', cfg='vit_b16_ep10_ctxv1_bs4_lr35'), demo=_dept_demo)
kgcoop_dept_xd = dict(train=dict(mode='xd', trainer='ExtrasLinearProbeKgCoOp', cfg='vit_b16_ep10_ctxv1_bs4_lr35'),
                      demo=_dept_demo)
kgcoop_dept_all = dict(train=dict(mode='all', trainer='ExtrasLinearProbeKgCoOp', cfg='vit_b16_ep10_ctxv1_bs4_lr35',
                                  opts=_dept_fs_opts), grid_search=_shot_grid, demo=_dept_demo)
maple_dept = dict(train=dict(trainer='ExtrasLinearProbeMaPLe', cfg='vit_b16_c2_ep10_batch4_2ctx'), demo=_dept_demo)
maple_dept_xd = dict(train=dict(mode='xd', trainer='ExtrasLinearProbeMaPLe', cfg='vit_b16_c2_ep10_batch4_2ctx'),
                     demo=_dept_demo)
maple_dept_all = dict(train=dict(mode='all', trainer='ExtrasLinearProbeMaPLe', cfg='vit_b16_c2_ep10_batch4_2ctx',
                                 opts=_dept_fs_opts), grid_search=_shot_grid, demo=_dept_demo)
