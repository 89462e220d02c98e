"""The BERT family: a bidirectional encoder, pretrained as a masked LM and fine-tuned to classify.

model.py (encoder and heads), presets.py, training.py, command.py, classifier.py (texts ->
labels and pooled embeddings), evaluation.py (accuracy, macro-F1, confusion matrix),
huggingface.py (BERT checkpoints in and out) and keras_hub.py (KerasHub BERT presets in).
"""

from zoo.families import Family, Imported
from zoo.families.bert.presets import PRESETS


class BertFamily(Family):
    name = "bert"
    description = "BERT-style encoder: masked-LM pretraining or a text classifier"
    presets = PRESETS
    tasks = ("mlm", "classify", "tag", "qa")

    def train_command(self):
        from zoo.families.bert.command import bert

        return bert

    def model_class(self, task):
        from zoo.families.bert.model import BertClassifier, BertMaskedLM, BertSpanQA, BertTagger

        return {"classify": BertClassifier, "tag": BertTagger, "qa": BertSpanQA}.get(task, BertMaskedLM)

    hf_architectures = ("BertModel", "BertForMaskedLM", "BertForSequenceClassification")

    def import_hf(self, checkpoint, progress=None):
        from zoo.families.bert.huggingface import import_checkpoint

        return Imported(*import_checkpoint(checkpoint, progress))

    keras_hub_backbones = ("BertBackbone",)

    def import_keras_hub(self, preset, progress=None):
        from zoo.families.bert.keras_hub import import_preset

        return Imported(*import_preset(preset, progress))

    def export_hf(self, model, tokenizer, info, directory, path):
        from zoo.families.bert.huggingface import export_checkpoint

        export_checkpoint(model, tokenizer, info.labels, directory)

    def runtime(self, task, model, tokenizer, path, info):
        from zoo.layers.quantized import inference_model

        if task not in ("qa", "tag", "classify"):
            return None  # a masked LM is pretrained to be fine-tuned, not served
        model = inference_model(model)  # an int4 model's float copy on a CPU
        if task == "qa":
            from zoo.families.bert.answerer import Answerer

            return Answerer(model, tokenizer)
        if task == "tag":
            from zoo.families.bert.tagger import Tagger

            return Tagger(model, tokenizer, info.labels)
        from zoo.families.bert.classifier import Classifier

        return Classifier(model, tokenizer, info.labels)

    def evaluate(self, model, tokenizer, info, path, data=None, beam_width=4):
        from zoo.families.bert import evaluation

        if info.task == "tag":
            return evaluation.evaluate_tagger(model, tokenizer, info, data)
        if info.task == "qa":
            return evaluation.evaluate_answerer(model, tokenizer, info, data)
        if info.task != "classify":
            return super().evaluate(model, tokenizer, info, path, data, beam_width)
        return evaluation.evaluate_classifier(model, tokenizer, info, data)

    def format_report(self, report, metrics=()):
        if "squad" in report:
            scores = report["squad"]
            return f"exact match {scores['exact_match']:.2f}  F1 {scores['f1']:.2f}  ({scores['questions']} questions)"
        if "entities" in report:
            from zoo.families.bert.entities import format_entity_scores

            return f"entity-level scores on {report['sentences']} sentences:\n" + \
                format_entity_scores(report["entities"])
        from zoo.families.bert.classifier import format_report

        return format_report(report)

    def headline_scores(self, report, metrics=()):
        if "squad" in report:
            return [("exact_match", report["squad"]["exact_match"], True), ("f1", report["squad"]["f1"], True)]
        if "entities" in report:
            return [(f"entity_{k}", report["entities"][k], True) for k in ("precision", "recall", "f1")]
        return [("accuracy", report["accuracy"], True), ("macro_f1", report["macro_f1"], True)]

    def bench_model(self, preset, vocabulary_size, seq_len, batch_size, prompt_tokens, new_tokens, decode_batches):
        from zoo.families.bert.bench import bench_model

        return bench_model(preset, vocabulary_size, seq_len, batch_size, prompt_tokens, new_tokens, decode_batches)


FAMILY = BertFamily()
