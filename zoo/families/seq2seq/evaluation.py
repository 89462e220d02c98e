"""`zoo eval` of a seq2seq model: BLEU and chrF of greedy and beam-search decoding, on a file of
pairs or on the validation split the model was trained with."""

from zoo.training.run import training_data


def evaluate_translator(model, target_tokenizer, source_tokenizer, info, data=None, beam_width=4):
    """BLEU and chrF, greedy and beam search (see translation_scores)."""
    from zoo.data.pairs import DEFAULT_PAIRS, read_pairs, split_pairs
    from zoo.families.seq2seq.training import translation_scores

    recorded = info.provenance.get("data") or {}
    columns = {k: recorded.get(k) for k in ("source_column", "target_column")}
    if data is not None:
        pairs = read_pairs(data, **columns)
    else:
        _, pairs = split_pairs(read_pairs(training_data(recorded, DEFAULT_PAIRS), **columns), recorded["val_fraction"])
    return translation_scores(model, source_tokenizer, target_tokenizer, pairs, beam_width)
