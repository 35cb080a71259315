"""Public chest-X-ray encoders' checkpoint formats, converted to the timm architectures that match them."""

from .formats import FORMATS, TIMM_FORMAT, CheckpointFormat, convert_checkpoint, detect_format, sample_keys
from .sources import EncoderNotFoundError, EncoderSource, is_hub_id, resolve_source

__all__ = [
    "FORMATS",
    "TIMM_FORMAT",
    "CheckpointFormat",
    "EncoderNotFoundError",
    "EncoderSource",
    "convert_checkpoint",
    "detect_format",
    "is_hub_id",
    "resolve_source",
    "sample_keys",
]
