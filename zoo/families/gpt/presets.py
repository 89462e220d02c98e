"""The gpt family's presets: plain data (no keras import), read by `--help` and the CLI's choices."""

PRESETS = {
    # CPU-sized: demos and tests.
    "nano": dict(num_layers=4, num_heads=4, hidden_dim=128, intermediate_dim=512, max_length=128, dropout=0.0),
    # nanoGPT's Shakespeare "baby GPT".
    "small": dict(num_layers=6, num_heads=6, hidden_dim=384, intermediate_dim=1536, max_length=256, dropout=0.2),
    # GPT-2 124M.
    "gpt2": dict(num_layers=12, num_heads=12, hidden_dim=768, intermediate_dim=3072, max_length=1024, dropout=0.0),
}
