"""`zoo train seq2seq`: an encoder-decoder trained on (source, target) pairs with teacher forcing
and label smoothing, then scored with BLEU and chrF (greedy and beam search) on the validation
split.

Pairs come from a .tsv/.csv/.jsonl file (default: the shipped English-French UI messages). One
byte-level BPE vocabulary serves both sides unless `shared_vocabulary` is off; then the source
tokenizer lives in `source_tokenizer/` beside the target's `tokenizer.json`. With `init` (a
seq2seq run or bundle, e.g. an imported Marian or BART) the run fine-tunes that model: its shape,
tokenizers (Marian's SentencePiece models included) and weights.

Data is read and checked before keras is imported, so bad input fails in a fraction of a second.
"""

import dataclasses
import math
import sys
from pathlib import Path

from zoo.data.pairs import (DEFAULT_PAIRS, PairBatches, encode_pairs, filter_pairs_by_length, read_pairs, split_pairs,
                            validation_pairs)
from zoo.errors import ZooError
from zoo.families.seq2seq import FAMILY, SOURCE_TOKENIZER
from zoo.tokenizers import load_tokenizer, train_bpe
from zoo.training import run

def label_smoothed_loss(smoothing):
    """Cross-entropy against labels smoothed by `smoothing` (Szegedy et al. 2016), from sparse labels,
    averaged over the weighted (non-padding) target tokens.

    Keras's sparse cross-entropy has no label smoothing and its dense one needs one-hot targets of
    (batch, length, vocabulary); this computes the same quantity from the log-softmax directly.
    """
    import keras
    from keras import ops

    if not smoothing:
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="mean_with_sample_weight")

    class LabelSmoothedCrossentropy(keras.losses.Loss):
        def call(self, labels, logits):
            log_probs = ops.log_softmax(logits, axis=-1)
            picked = ops.take_along_axis(log_probs, ops.expand_dims(ops.cast(labels, "int32"), -1), axis=-1)[..., 0]
            return -(1.0 - smoothing) * picked - smoothing * ops.mean(log_probs, axis=-1)

    return LabelSmoothedCrossentropy(reduction="mean_with_sample_weight", name="label_smoothed_crossentropy")


def _tokenizers(train_pairs, vocabulary_size, shared):
    sources, targets = [s for s, _ in train_pairs], [t for _, t in train_pairs]
    if shared:
        tokenizer = train_bpe(sources + targets, vocabulary_size)
        return tokenizer, tokenizer
    return train_bpe(sources, vocabulary_size), train_bpe(targets, vocabulary_size)


def _new_run_config(data, preset, overrides, vocabulary_size, shared, columns, val_fraction, label_smoothing,
                    train_config, init=None, lora=None):
    pairs = read_pairs(data, **columns)  # first: bad data fails before anything else
    train_pairs, val_pairs = split_pairs(pairs, val_fraction)
    if init is not None:
        model_config, target_tokenizer = run.init_source(init, "seq2seq", overrides)
        source_tokenizer = FAMILY.source_tokenizer(init)
        shared = not Path(init, SOURCE_TOKENIZER).is_dir()
    else:
        from zoo.families.seq2seq.model import PRESETS

        if preset not in PRESETS:
            raise ZooError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
        model_config = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
        source_tokenizer, target_tokenizer = _tokenizers(train_pairs, vocabulary_size, shared)
        model_config.update(source_vocabulary_size=source_tokenizer.vocabulary_size,
                            target_vocabulary_size=target_tokenizer.vocabulary_size, shared_embeddings=shared)
    config = {"kind": "seq2seq", "task": "generate", "preset": None if init else preset, "model": model_config,
              "init": str(init) if init else None, **({"lora": lora} if lora else {}),
              "label_smoothing": label_smoothing,
              "tokenizer": {"kind": target_tokenizer.kind, "vocabulary_size": target_tokenizer.vocabulary_size,
                            "shared": shared, "source_vocabulary_size": source_tokenizer.vocabulary_size},
              "train": dataclasses.asdict(train_config),
              "data": run.data_entry(data, DEFAULT_PAIRS, val_fraction=val_fraction, **columns)}
    return config, source_tokenizer, target_tokenizer, (train_pairs, val_pairs)


def pair_split(config):
    """The (train, validation) pairs of a run, as they were split."""
    data = config["data"]
    pairs = read_pairs(run.data_path(config), source_column=data["source_column"], target_column=data["target_column"])
    return split_pairs(pairs, data["val_fraction"])


def translation_scores(model, source_tokenizer, target_tokenizer, pairs, beam_width=4):
    """BLEU, chrF and ROUGE-1/2/L of greedy and of beam-search outputs for `pairs`, with examples."""
    from zoo.families.seq2seq.generator import Seq2SeqGenerator, evaluate_translations
    from zoo.families.seq2seq.metrics import METRICS

    generator = Seq2SeqGenerator(model, source_tokenizer, target_tokenizer)
    greedy = evaluate_translations(generator, pairs)
    beam = evaluate_translations(generator, pairs, beam_width=beam_width)
    return {"pairs": greedy["n"], "greedy": {k: greedy[k] for k in METRICS},
            "beam": {"width": beam_width, **{k: beam[k] for k in METRICS}}, "examples": beam["examples"]}


def format_scores(scores, metrics=()):
    """The scores as text: `metrics` (names of zoo.families.seq2seq.metrics.METRICS) or all of them."""
    from zoo.families.seq2seq.metrics import chosen, format_line

    shown = chosen(metrics)
    lines = [f"{name:>7}: {format_line(scores[name], shown)}" for name in ("greedy", "beam")]
    lines[1] += f"  (width {scores['beam']['width']})"
    lines.insert(0, f"on {scores['pairs']} validation pairs:")
    for example in scores["examples"]:
        lines.append(f"  {example['source']}\n    -> {example['hypothesis']}\n    (reference: {example['reference']})")
    return "\n".join(lines)


def train_seq2seq(out, data=None, preset="nano", model_overrides=None, vocabulary_size=4000, shared_vocabulary=True,
                  columns=None, val_fraction=0.1, label_smoothing=0.1, bleu_pairs=None, beam_width=4,
                  train_config=None, resume=False, explicit_train_changes=None, command=None, init=None, lora=None):
    """Trains (or with `resume`, continues) a seq2seq run in `out`, from scratch or, with `init`,
    from a pretrained seq2seq run or bundle (with `lora`, {"rank", "alpha"}: LoRA adapters on its
    attention projections instead of every weight; zoo.training.lora). Returns the loop's summary
    dict, with BLEU/chrF of greedy and beam decoding on (up to `bleu_pairs` of) the validation
    pairs under "translation" (`bleu_pairs=0` skips that)."""
    from zoo.training.config import TrainConfig

    out = Path(out)
    columns = columns or {"source_column": None, "target_column": None}
    if resume:
        config = run.resumed_config(out, "seq2seq", data, explicit_train_changes or {}, DEFAULT_PAIRS, lora)
        train_pairs, val_pairs = pair_split(config)
        source_tokenizer, target_tokenizer = FAMILY.source_tokenizer(out), load_tokenizer(out)
        train_config = TrainConfig(**config["train"])
    else:
        run.check_new_run(out)
        train_config = train_config or TrainConfig()
        config, source_tokenizer, target_tokenizer, (train_pairs, val_pairs) = _new_run_config(
            data, preset, model_overrides or {}, vocabulary_size, shared_vocabulary, columns, val_fraction,
            label_smoothing, train_config, init, lora)
    lengths = config["model"]["max_source_length"], config["model"]["max_target_length"]
    train_pairs, dropped = filter_pairs_by_length(train_pairs, source_tokenizer, target_tokenizer, *lengths)
    val_pairs, val_dropped = filter_pairs_by_length(val_pairs, source_tokenizer, target_tokenizer, *lengths)
    if dropped or val_dropped:
        print(f"note: dropped {dropped} training and {val_dropped} validation pairs longer than the maximum lengths "
              f"{lengths[0]} / {lengths[1]} tokens", file=sys.stderr)
    config["data"].update(train_pairs=len(train_pairs), val_pairs=len(val_pairs), dropped_pairs=dropped + val_dropped)
    end = target_tokenizer.end_token_id
    start = config["model"].get("decoder_start_token_id")
    ids = dict(start_id=end if start is None else start, end_id=end,
               pad_id=end)  # padding carries weight 0 and a padding mask
    batches = PairBatches(*encode_pairs(train_pairs, source_tokenizer, target_tokenizer), *lengths,
                          train_config.batch_size, train_config.seed, **ids)
    inputs, labels, weights = validation_pairs(*encode_pairs(val_pairs, source_tokenizer, target_tokenizer), *lengths,
                                               max_pairs=train_config.eval_blocks, **ids)
    tokenizers = {"": target_tokenizer}
    if not config["tokenizer"]["shared"]:
        tokenizers[SOURCE_TOKENIZER] = source_tokenizer
    run.write_run(out, config, tokenizers, resume, command)

    def evaluate(model):
        loss = float(model.evaluate(inputs, labels, sample_weight=weights, batch_size=train_config.batch_size,
                                    verbose=0, return_dict=True)["loss"])
        return {"val_loss": loss, "val_perplexity": math.exp(min(loss, 50.0))}

    def build_model():
        from zoo.families.seq2seq.model import Seq2Seq

        model = Seq2Seq(**config["model"])
        model.build()
        return run.carry_init_weights(model, config, resume)

    summary = run.fit(out, config, train_config, build_model, batches, (inputs, labels, weights), evaluate, resume,
                      describe=f"{len(train_pairs):,} training / {len(val_pairs):,} validation pairs, "
                               f"{'one' if config['tokenizer']['shared'] else 'source and target'} "
                               f"{target_tokenizer.kind} tokenizer of {source_tokenizer.vocabulary_size} / "
                               f"{target_tokenizer.vocabulary_size} tokens, ",
                      loss=label_smoothed_loss(config["label_smoothing"]))
    if bleu_pairs != 0 and not summary["stopped"]:
        from zoo.bundle import load_run

        model, _, _ = load_run(out)  # the final weights in float32, as `zoo eval` and a bundle see them
        scored = val_pairs[:bleu_pairs] if bleu_pairs else val_pairs
        summary["translation"] = translation_scores(model, source_tokenizer, target_tokenizer, scored, beam_width)
    return summary
