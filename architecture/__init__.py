"""The gpt-oss architecture vocabulary and checkpoint reading: the leaf both sides of the wall share.

`converters` (checkpoint formats -> the runtime layout) and `metal_runtime` (the runtime layout ->
a model) both import this package; it imports no MLX, no numpy and nothing else of ours. Each fact
they share has one home here:
- `hparams`: `Architecture` (Hugging Face gpt_oss field names), its config keys read and written,
  and what follows from it (YaRN range, parameter counts, bytes per decoded token, KV bytes);
- `config_file`: reading a folder's config.json into a validated `Architecture`;
- `tensor_files`: validated SafeTensors headers, a folder's tensors, byte ranges read into buffers;
- `folders`: which files of a folder hold the weights, and what users download by mistake.
Errors are `ArchitectureError` and `CheckpointError`; each side reports them as its own.
"""

from .config_file import architecture_from_config, read_architecture, read_config
from .errors import ArchitectureError, CheckpointError, reported_as
from .folders import affine_experts, check_weight_files, describe_weights_file, foreign_model_type, foreign_weights
from .hparams import (
    EOS_TOKEN_ID,
    FULL,
    MXFP4_GROUP,
    PAD_TOKEN_ID,
    SLIDING,
    Architecture,
    ParameterCounts,
    StoredBytes,
    bytes_per_decoded_token,
    is_embedding_tensor,
    is_expert_tensor,
    quantization_overrides,
)
from .tensor_files import (
    DTYPE_SIZES,
    FLOAT_DTYPES,
    INDEX_NAME,
    SafetensorsFile,
    StoredTensor,
    TensorSpec,
    collect_tensors,
    read_bytes,
    read_into,
    weight_files,
)

__all__ = [
    "DTYPE_SIZES", "EOS_TOKEN_ID", "FLOAT_DTYPES", "FULL", "INDEX_NAME", "MXFP4_GROUP", "PAD_TOKEN_ID", "SLIDING",
    "Architecture", "ArchitectureError", "CheckpointError", "ParameterCounts", "SafetensorsFile", "StoredBytes",
    "StoredTensor", "TensorSpec", "affine_experts", "architecture_from_config", "bytes_per_decoded_token",
    "check_weight_files", "collect_tensors", "describe_weights_file", "foreign_model_type", "foreign_weights",
    "is_embedding_tensor", "is_expert_tensor", "quantization_overrides", "read_architecture", "read_bytes",
    "read_config", "read_into", "reported_as", "weight_files",
]
