"""`zoo import`: a pretrained checkpoint as a zoo bundle."""

import click

from cli.common import Progress, backend_option


@click.command("import")
@backend_option
@click.argument("source")
@click.option("--out", required=True, type=click.Path(), help="Bundle directory to write.")
@click.option("--revision", default=None, help="A hub branch, tag or commit (hf:// sources only).")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
def import_(source, out, revision, force):
    """Import a pretrained checkpoint as a bundle that every zoo command and backend serves.

    SOURCE is a local Hugging Face model directory (config.json, model.safetensors or a sharded
    index, and its tokenizer files) or hf://<repo id>, downloaded with huggingface_hub when online
    (its cache and HF_HUB_OFFLINE apply); or a KerasHub preset directory (save_to_preset) or a
    kaggle:// handle. Supported: GPT2LMHeadModel, GPT2Model and KerasHub's GPT2Backbone (gpt);
    BertForSequenceClassification, BertForMaskedLM, BertModel and KerasHub's BertBackbone (bert);
    MarianMTModel, BartForConditionalGeneration and BlenderbotForConditionalGeneration (seq2seq).
    Weights are read one tensor at a time; pickle checkpoints (pytorch_model.bin) are refused.

    \b
    Example:
      zoo import hf://gpt2 --out bundles/gpt2
      zoo import hf://Helsinki-NLP/opus-mt-en-es --out bundles/en-es && zoo translate bundles/en-es "Hello!"
      zoo import ~/models/distilgpt2 --out bundles/distilgpt2 --backend torch
      zoo import kaggle://keras/gpt2/keras/gpt2_base_en --out bundles/gpt2-kh
      zoo import ~/models/bert-sst2 --out bundles/sst2 && zoo classify bundles/sst2 "a gripping film"
      zoo generate bundles/gpt2 --prompt "The meaning of life is" --max-new-tokens 40
    """
    from zoo.pretrained import import_checkpoint

    path, info = import_checkpoint(source, out, force=force, revision=revision, progress=Progress("weights"))
    pretrained = info.provenance["pretrained"]
    click.echo(f"wrote {path} ({info.kind}, task {info.task}, {pretrained['architecture']}, "
               f"context {info.max_length}, vocabulary {info.vocabulary_size})")
