"""Our CLIP: OpenAI-compatible model, checkpoint loading/download and tokenizer.

Imports nothing from the rest of the project.
"""

from .loading import (
    CheckpointError,
    MODEL_FILES,
    OPENAI_DATASET_MEAN,
    OPENAI_DATASET_STD,
    _download,
    available_models,
    check_model_name,
    default_cache_dir,
    download,
    image_transform,
    load,
    load_state_dict,
    model_url,
    resolve_checkpoint,
)
from .model import (
    CLIP,
    CLIPConfig,
    ModifiedResNet,
    Transformer,
    VisionTransformer,
    build_model,
    convert_weights,
    infer_config,
)
from .tokenizer import EOT_TOKEN, SOT_TOKEN, decode_tokens, encode_text_tokens, tokenize

__all__ = [
    "CLIP",
    "CheckpointError",
    "CLIPConfig",
    "EOT_TOKEN",
    "MODEL_FILES",
    "ModifiedResNet",
    "OPENAI_DATASET_MEAN",
    "OPENAI_DATASET_STD",
    "SOT_TOKEN",
    "Transformer",
    "VisionTransformer",
    "available_models",
    "check_model_name",
    "build_model",
    "convert_weights",
    "decode_tokens",
    "default_cache_dir",
    "download",
    "encode_text_tokens",
    "image_transform",
    "infer_config",
    "load",
    "load_state_dict",
    "model_url",
    "resolve_checkpoint",
    "tokenize",
]
