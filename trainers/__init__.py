"""Every method registers itself in TRAINER_REGISTRY on import."""
from trainers import coop, zsclip  # noqa: F401
from trainers import cocoop  # noqa: F401  (CoCoOp)
from trainers import finetune  # noqa: F401  (FinetuneCLIP)
from trainers import skip_tuning  # noqa: F401  (SkipTuning)
from trainers import kgcoop  # noqa: F401  (KgCoOp)
from trainers import promptsrc  # noqa: F401  (PromptSRC)
