"""`zoo eval` of a language model (the gpt and lstm families): mean next-token cross-entropy and
perplexity on blocks of the model's context.

Without `data`, on the validation split the model was trained with, rebuilt from the provenance
(the corpus, or the prepared corpus, and the split's fraction) and the tokenizer, and as many
blocks as training scored (`--eval-blocks`, spread evenly over the split): with the default
`--seq-len` (the context) this is the `val_loss` / `val_perplexity` training logged. With `data`
(a .txt, .jsonl or directory, read as `zoo train` reads it), every whole block of it.
"""

import math

import numpy as np

from zoo.errors import ZooError

BATCH = 16


def _validation_tokens(info, tokenizer):
    from zoo.data import DEFAULT_CORPUS, encode_documents, read_documents, split_documents
    from zoo.data.prepared import PreparedCorpus
    from zoo.training.run import SHIPPED

    recorded = info.provenance.get("data") or {}
    path = recorded.get("path", "")
    if recorded.get("prepared"):
        return PreparedCorpus(path).val
    source = DEFAULT_CORPUS if path.startswith(SHIPPED) or not path else path
    try:
        documents = read_documents(source, recorded.get("text_field", "text"))
    except ZooError as e:
        raise ZooError(f"the training data {path} cannot be read here ({e}); give the evaluation data with --data") from None
    return encode_documents(tokenizer, split_documents(documents, recorded.get("val_fraction", 0.1))[1])


def evaluate_language_model(model, tokenizer, info, data=None):
    """{"loss", "perplexity", "blocks", "tokens", "block_length"} of a loaded language model."""
    from zoo.data import encode_documents, read_documents, validation_blocks

    length = int(model.max_length)
    if data is not None:
        tokens = encode_documents(tokenizer, read_documents(data))
        blocks = max(1, (len(tokens) - 1) // length)
    else:
        tokens = _validation_tokens(info, tokenizer)
        blocks = int((info.provenance.get("train") or {}).get("eval_blocks", 64))
    inputs, targets = validation_blocks(np.asarray(tokens, np.int32), length, blocks)
    total = 0.0
    for start in range(0, len(inputs), BATCH):
        logits = np.asarray(_logits(model, inputs[start:start + BATCH]), np.float64)
        logits -= logits.max(axis=-1, keepdims=True)
        log_probabilities = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
        total -= np.take_along_axis(log_probabilities, targets[start:start + BATCH, :, None], axis=-1).sum()
    loss = total / targets.size
    return {"loss": float(loss), "perplexity": float(math.exp(min(loss, 50.0))), "blocks": int(len(inputs)),
            "tokens": int(targets.size), "block_length": length}


def _logits(model, inputs):
    import keras

    return keras.ops.convert_to_numpy(model(inputs))


def format_report(report):
    return (f"perplexity {report['perplexity']:.4f}  loss {report['loss']:.4f}  "
            f"({report['blocks']} blocks of {report['block_length']} tokens, {report['tokens']:,} predicted)")


def headline(report):
    return [("perplexity", report["perplexity"], False), ("loss", report["loss"], False)]


class LanguageModelEvaluation:
    """The `zoo eval` methods of a language-model family (gpt, lstm), mixed into its Family."""

    def evaluate(self, model, tokenizer, info, path, data=None, beam_width=4):
        return evaluate_language_model(model, tokenizer, info, data)

    def format_report(self, report, metrics=()):
        return format_report(report)

    def headline_scores(self, report, metrics=()):
        return headline(report)
