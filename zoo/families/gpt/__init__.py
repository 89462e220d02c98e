"""The GPT family: a decoder-only language model that continues a prompt.

model.py (the network), presets.py, training.py (`zoo train gpt`'s library side), command.py (its
flags), generator.py (prompt -> streamed continuation), torch_engine.py (the torch fast path) and
huggingface.py (GPT-2 checkpoints in and out) and keras_hub.py (KerasHub GPT-2 presets in).
"""

from zoo.families import Family, Imported
from zoo.families.gpt.presets import PRESETS
from zoo.families.perplexity import LanguageModelEvaluation


class GPTFamily(LanguageModelEvaluation, Family):
    name = "gpt"
    description = "GPT-style decoder-only language model"
    presets = PRESETS
    tasks = ("generate",)

    def train_command(self):
        from zoo.families.gpt.command import gpt

        return gpt

    def model_class(self, task):
        from zoo.families.gpt.model import GPT

        return GPT

    hf_architectures = ("GPT2LMHeadModel", "GPT2Model")

    def import_hf(self, checkpoint, progress=None):
        from zoo.families.gpt.huggingface import import_checkpoint

        model, tokenizer = import_checkpoint(checkpoint, progress)
        return Imported(model, tokenizer, "generate")

    keras_hub_backbones = ("GPT2Backbone",)

    def import_keras_hub(self, preset, progress=None):
        from zoo.families.gpt.keras_hub import import_preset

        model, tokenizer = import_preset(preset, progress)
        return Imported(model, tokenizer, "generate")

    def export_hf(self, model, tokenizer, info, directory, path):
        from zoo.families.gpt.huggingface import export_checkpoint

        export_checkpoint(model, tokenizer, directory)

    def runtime(self, task, model, tokenizer, path, info):
        if task != "generate":
            return None
        from zoo.families.gpt.generator import Generator

        return Generator(model, tokenizer, trained_positions=info.provenance.get("trained_positions"))

    def bench_model(self, preset, vocabulary_size, seq_len, batch_size, prompt_tokens, new_tokens, decode_batches):
        from zoo.families.gpt.bench import bench_model

        return bench_model(preset, vocabulary_size, seq_len, batch_size, prompt_tokens, new_tokens, decode_batches)


FAMILY = GPTFamily()
