"""The bert family's presets: plain data (no keras import), read by `--help` and the CLI's choices."""

PRESETS = {
    # CPU-sized, for demos and tests: the shape of BERT-Tiny (Turc et al. 2019) with 128 positions.
    "nano": dict(num_layers=2, num_heads=2, hidden_dim=128, intermediate_dim=512, max_length=128, dropout=0.1),
    # BERT-Small (Turc et al. 2019).
    "small": dict(num_layers=4, num_heads=8, hidden_dim=512, intermediate_dim=2048, max_length=512, dropout=0.1),
    # BERT-base ("110M" in the paper): 109,482,240 encoder parameters at vocabulary 30522, the
    # count of Hugging Face's bert-base-uncased.
    "base": dict(num_layers=12, num_heads=12, hidden_dim=768, intermediate_dim=3072, max_length=512, dropout=0.1),
}
