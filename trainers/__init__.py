"""Every method registers itself in TRAINER_REGISTRY on import."""
from trainers import coop, zsclip  # noqa: F401
