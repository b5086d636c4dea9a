"""gptoss-metal: OpenAI's gpt-oss models on Apple Silicon, on MLX.

The repository root is this package (`gptoss_metal`); each top-level folder is one subpackage with
one job (see docs/ARCHITECTURE.md):

- `architecture`  the gpt-oss vocabulary and checkpoint reading both sides share; no MLX, no numpy
- `converters`    checkpoint formats -> the runtime layout (streaming, validated, atomic)
- `metal_runtime` the MLX model, Metal kernels and their MLX twins, KV caches, sampling, generation
- `harmony_io`    everything harmony: vocab, rendering, exact history, stream parser, OpenAI shapes
- `assistant`     engine (model + prompt cache + harmony), chat sessions, tools
- `server`        HTTP only: the OpenAI-compatible API
- `cli`           the `gptoss` command
"""

__version__ = "0.2.0"
