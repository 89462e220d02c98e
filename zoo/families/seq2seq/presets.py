"""The seq2seq family's presets: plain data (no keras import), read by `--help` and the CLI's choices."""

PRESETS = {
    # CPU-sized: demos and tests.
    "nano": dict(num_encoder_layers=2, num_decoder_layers=2, num_heads=4, hidden_dim=128, intermediate_dim=512,
                 max_source_length=64, max_target_length=64, dropout=0.0),
    # A GPU-hour model for small parallel corpora.
    "small": dict(num_encoder_layers=4, num_decoder_layers=4, num_heads=4, hidden_dim=256, intermediate_dim=1024,
                  max_source_length=128, max_target_length=128, dropout=0.1),
    # The shape of transformer-base (Vaswani et al., 2017).
    "base": dict(num_encoder_layers=6, num_decoder_layers=6, num_heads=8, hidden_dim=512, intermediate_dim=2048,
                 max_source_length=256, max_target_length=256, dropout=0.1),
}
