"""The lstm family's presets: plain data (no keras import), read by `--help` and the CLI's choices.

Each has about the parameters of the gpt preset of the same name at the default vocabulary of
2048 BPE tokens (nano: 1.05M against the GPT's 1.07M; small: 11.0M against 11.5M), and the same
context (`max_length`). The output projection is tied to the token embedding, so the embedding is
as wide as the LSTM (`embedding_dim` = `hidden_dim`).
"""

PRESETS = {
    # CPU-sized: demos and tests.
    "nano": dict(num_layers=2, hidden_dim=200, embedding_dim=200, max_length=128, dropout=0.0, tie_embeddings=True),
    # Two layers of 768, as wide as GPT-2's, dropout as the gpt small preset's.
    "small": dict(num_layers=2, hidden_dim=768, embedding_dim=768, max_length=256, dropout=0.2, tie_embeddings=True),
}
