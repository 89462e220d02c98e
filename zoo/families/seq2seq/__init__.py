"""The seq2seq family: an encoder-decoder transformer for translation and summarization.

model.py (the network), presets.py, training.py, command.py, generator.py (source -> streamed
target, beam search, BLEU/chrF), torch_step.py (the torch decoder step), evaluation.py and
huggingface.py (BART, Marian and Blenderbot checkpoints in and out).
"""

from pathlib import Path

from zoo.families import Family, Imported
from zoo.families.seq2seq.metrics import METRICS
from zoo.families.seq2seq.presets import PRESETS

SOURCE_TOKENIZER = "source_tokenizer"  # the source side's tokenizer, when the vocabularies are separate


class Seq2SeqFamily(Family):
    name = "seq2seq"
    description = "encoder-decoder transformer for translation and summarization"
    presets = PRESETS
    tasks = ("generate",)

    def train_command(self):
        from zoo.families.seq2seq.command import seq2seq

        return seq2seq

    def model_class(self, task):
        from zoo.families.seq2seq.model import Seq2Seq

        return Seq2Seq

    def context(self, model_config):
        return int(model_config["max_source_length"]), int(model_config["max_target_length"])

    def source_tokenizer(self, path):
        from zoo.tokenizers import load_tokenizer

        separate = Path(path, SOURCE_TOKENIZER)
        return load_tokenizer(separate if separate.is_dir() else path)

    hf_architectures = ("BartForConditionalGeneration", "MarianMTModel", "BlenderbotForConditionalGeneration")

    def import_hf(self, checkpoint, progress=None):
        from zoo.families.seq2seq.huggingface import import_checkpoint

        model, source_tokenizer, target_tokenizer = import_checkpoint(checkpoint, progress)
        extra = {} if source_tokenizer is target_tokenizer else {SOURCE_TOKENIZER: source_tokenizer}
        return Imported(model, target_tokenizer, "generate", extra_tokenizers=extra)

    def export_hf(self, model, tokenizer, info, directory, path):
        from zoo.families.seq2seq.huggingface import export_checkpoint

        export_checkpoint(model, tokenizer, self.source_tokenizer(path), directory)

    def runtime(self, task, model, tokenizer, path, info):
        if task != "generate":
            return None
        from zoo.families.seq2seq.generator import Seq2SeqGenerator

        return Seq2SeqGenerator(model, self.source_tokenizer(path), tokenizer)

    def evaluate(self, model, tokenizer, info, path, data=None, beam_width=4):
        from zoo.families.seq2seq.evaluation import evaluate_translator

        return evaluate_translator(model, tokenizer, self.source_tokenizer(path), info, data, beam_width)

    report_metrics = METRICS

    def format_report(self, report, metrics=()):
        from zoo.families.seq2seq.training import format_scores

        return format_scores(report, metrics)

    def headline_scores(self, report, metrics=()):
        from zoo.families.seq2seq.metrics import chosen

        return [(f"{way}_{name}", report[way][name], True) for way in ("greedy", "beam") for name in chosen(metrics)]

    def bench_model(self, preset, vocabulary_size, seq_len, batch_size, prompt_tokens, new_tokens, decode_batches):
        from zoo.families.seq2seq.bench import bench_model

        return bench_model(preset, vocabulary_size, seq_len, batch_size, prompt_tokens, new_tokens, decode_batches)


FAMILY = Seq2SeqFamily()
