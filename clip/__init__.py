"""Our CLIP: OpenAI-compatible model, checkpoint loading/download and tokenizer.

Imports nothing from the rest of the project.
"""

from .loading import (
    CheckpointError,
    MODEL_FILES,
    MODEL_RESOLUTIONS,
    _download,
    available_models,
    check_model_name,
    default_cache_dir,
    download,
    load,
    load_state_dict,
    model_url,
    preprocess_cfg,
    register_local_model,
    resolve_checkpoint,
)
from .model import (
    CLIP,
    CLIPConfig,
    PRECISIONS,
    ModifiedResNet,
    Transformer,
    VisionTransformer,
    build_model,
    convert_weights,
    infer_config,
)
from .preprocess import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD, image_transform, openai_preprocess_cfg
from .tokenizer import EOT_TOKEN, SOT_TOKEN, decode_tokens, encode_text_tokens, recording_texts, tokenize

__all__ = [
    "CLIP",
    "CheckpointError",
    "CLIPConfig",
    "EOT_TOKEN",
    "MODEL_FILES",
    "MODEL_RESOLUTIONS",
    "ModifiedResNet",
    "OPENAI_DATASET_MEAN",
    "OPENAI_DATASET_STD",
    "PRECISIONS",
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
    "openai_preprocess_cfg",
    "preprocess_cfg",
    "register_local_model",
    "resolve_checkpoint",
    "recording_texts",
    "tokenize",
]
