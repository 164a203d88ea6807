"""Every method registers itself in TRAINER_REGISTRY on import."""
from trainers import coop, zsclip  # noqa: F401
from trainers import cocoop  # noqa: F401  (CoCoOp)
from trainers import finetune  # noqa: F401  (FinetuneCLIP)
from trainers import skip_tuning  # noqa: F401  (SkipTuning)
from trainers import kgcoop  # noqa: F401  (KgCoOp)
from trainers import maple  # noqa: F401  (MaPLe)
from trainers import taskres  # noqa: F401  (TaskRes)
from trainers import clip_adapter  # noqa: F401  (CLIP_Adapter)
from trainers import dyt  # noqa: F401  (DyT)
from trainers import promptsrc  # noqa: F401  (PromptSRC)
from trainers import dept  # noqa: F401  (DePT and the original's ExtrasLinearProbe* names; last: it wraps the others)
