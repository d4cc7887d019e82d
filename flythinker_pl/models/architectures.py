"""Every architecture by name, in one table (as litgpt's config hub): the tiny presets that the
embedded default pretrains and trains on CPU, and the Qwen2.5-Instruct sizes of the paper, whose
config values the GPU check and the memory estimate build models from (with CPU stand-ins)."""

from __future__ import annotations

# Sizes for the Reasoner-size ablation (0.5B/1.5B/3B in the paper -> 64/128/256 here).
TINY_PRESETS = {
    "tiny-64": dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=256
    ),
    "tiny-128": dict(
        hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, intermediate_size=512
    ),
    "tiny-256": dict(
        hidden_size=256, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4, intermediate_size=1024
    ),
}

# Qwen2.5-{0.5B,1.5B,3B}-Instruct, from their config.json (model_type qwen2); sliding window off.
QWEN25 = dict(
    vocab_size=151936,
    tie_word_embeddings=True,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
    max_position_embeddings=32768,
    hidden_act="silu",
    use_sliding_window=False,
)
TINY = dict(QWEN25, vocab_size=512, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
ARCHITECTURES = {
    "Qwen2.5-0.5B-Instruct": dict(
        QWEN25,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
    ),
    "Qwen2.5-1.5B-Instruct": dict(
        QWEN25,
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
    ),
    "Qwen2.5-3B-Instruct": dict(
        QWEN25,
        hidden_size=2048,
        intermediate_size=11008,
        num_hidden_layers=36,
        num_attention_heads=16,
        num_key_value_heads=2,
    ),
    # CPU stand-ins in the same roles (and the same code path)
    "tiny-0.5B": dict(TINY, hidden_size=64, intermediate_size=128),
    "tiny-1.5B": dict(TINY, hidden_size=96, intermediate_size=192),
    "tiny-3B": dict(TINY, hidden_size=128, intermediate_size=256),
}
