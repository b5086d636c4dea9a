"""Architecture presets for synthetic checkpoints.

`20b` and `120b` are the real gpt-oss shapes. `tiny` keeps the full o200k_harmony vocabulary
(harmony token ids must exist) but is otherwise small enough for CPU tests, with a sliding window
of 8 so short test sequences cross it. `small` sits between, with a hidden size that is not a
multiple of 512 (like 2880) for quick benchmark runs.
"""

from __future__ import annotations

from gptoss_metal.architecture import Architecture

VOCAB = 201088

PRESETS: dict[str, Architecture] = {
    "tiny": Architecture(
        num_hidden_layers=4, num_local_experts=8, num_experts_per_tok=4, vocab_size=VOCAB,
        hidden_size=64, intermediate_size=64, head_dim=16, num_attention_heads=4,
        num_key_value_heads=2, sliding_window=8,
    ),
    "small": Architecture(
        num_hidden_layers=4, num_local_experts=16, num_experts_per_tok=4, vocab_size=VOCAB,
        hidden_size=576, intermediate_size=576, head_dim=64, num_attention_heads=8,
        num_key_value_heads=2, sliding_window=128,
    ),
    "20b": Architecture(
        num_hidden_layers=24, num_local_experts=32, num_experts_per_tok=4, vocab_size=VOCAB,
        hidden_size=2880, intermediate_size=2880, head_dim=64, num_attention_heads=64,
        num_key_value_heads=8, sliding_window=128,
    ),
    "120b": Architecture(
        num_hidden_layers=36, num_local_experts=128, num_experts_per_tok=4, vocab_size=VOCAB,
        hidden_size=2880, intermediate_size=2880, head_dim=64, num_attention_heads=64,
        num_key_value_heads=8, sliding_window=128,
    ),
}

# Shard size for the Hugging Face layout (the official 20b repo has ~4.6 GB shards); tiny is
# split too, so every test exercises multi-shard reading.
HF_SHARD_BYTES = {"tiny": 16 * 2**20, "small": 256 * 2**20, "20b": 4_500_000_000, "120b": 4_500_000_000}
