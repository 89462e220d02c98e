"""`zoo train gpt`."""

import click

from zoo.families.gpt.presets import PRESETS
from zoo.training.distill import PRECISIONS
from zoo.training.options import corpus_options, lora_options, positive, training_command


@click.command()
@click.option("--preset", type=click.Choice(list(PRESETS)), default="nano", show_default=True, help="Model shape.")
@click.option("--init", type=click.Path(), default=None,
              help="Fine-tune a GPT run or bundle (e.g. GPT-2 from `zoo import`): its shape, tokenizer and weights; "
                   "instead of --preset and the tokenizer flags.")
@click.option("--teacher", type=click.Path(), default=None,
              help="Distill a language model run or bundle with the same tokenizer into this one: the loss is the KL "
                   "divergence from the teacher's next-token distribution to the model's at every position (the "
                   "logged loss; val_loss stays the corpus's). E.g. a speculative-decoding draft, with --init.")
@click.option("--teacher-precision", type=click.Choice(PRECISIONS), default=None,
              help="The teacher's forward pass (most of a distillation step): bf16 is for where bfloat16 is native "
                   "(torch on a CPU with AMX: the step ~1.9x faster; a GPU from Ampere on), its distribution within a "
                   "KL of ~3e-5 of fp32's; slower where emulated (JAX/TensorFlow on a CPU). [default: fp32]")
@click.option("--num-layers", type=int, callback=positive, help="Override the preset.")
@click.option("--num-heads", type=int, callback=positive, help="Override the preset.")
@click.option("--hidden-dim", type=int, callback=positive, help="Override the preset.")
@click.option("--intermediate-dim", type=int, callback=positive, help="Override the preset (MLP width).")
@click.option("--max-length", type=int, callback=positive, help="Override the preset (context length).")
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), help="Override the preset.")
@click.option("--position-embedding", type=click.Choice(["learned", "rotary"]), help="Override the preset (default learned).")
@corpus_options
@lora_options
@training_command("gpt", multi_process=True)
def gpt(data, text_field, val_fraction, preset, init, teacher, teacher_precision, num_layers, num_heads, hidden_dim,
        intermediate_dim, max_length, dropout, position_embedding, tokenizer_kind, vocab_size, seq_len, lora, **run):
    """Train a GPT-style language model.

    Progress (loss, tokens/s, ETA) goes to stderr; checkpoints, metrics.jsonl and config.json to
    the run directory. Ctrl-C saves a checkpoint; --resume continues exactly where it stopped.

    \b
    Example:
      zoo train gpt --preset nano --max-steps 500 --out runs/shakespeare
      zoo train gpt --data my_corpus/ --tokenizer char --preset small --out runs/mine --precision bf16
      zoo train gpt --out runs/shakespeare --resume --max-steps 1000
      zoo import hf://gpt2 --out bundles/gpt2 && zoo train gpt --init bundles/gpt2 --data corpus.txt --seq-len 256
      zoo train gpt --init bundles/gpt2 --lora-rank 8 --data corpus.txt --seq-len 256 --out runs/gpt2-lora
      zoo train gpt --init runs/nano --teacher bundles/small --teacher-precision bf16 --data corpus.txt \\
          --out runs/nano-draft
      zoo prepare --data big_corpus/ --out prepared/big && zoo train gpt --data prepared/big --grad-accum 4
      zoo train gpt --out /shared/runs/big --coordinator host0:8476 --num-processes 2 --process-id 0   # host0
      zoo train gpt --out /shared/runs/big --coordinator host0:8476 --num-processes 2 --process-id 1   # host1
    """
    from zoo.data.prepared import is_prepared
    from zoo.families.gpt.training import train_gpt

    ctx = click.get_current_context()
    given = [name for name in ("preset", "tokenizer_kind", "vocab_size")
             if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE]
    if init is not None and given:
        flag = {"tokenizer_kind": "--tokenizer", "vocab_size": "--vocab-size"}.get(given[0], "--" + given[0])
        raise click.UsageError(f"{flag} cannot be combined with --init: the model's shape and tokenizer come from it")
    if init is not None and is_prepared(data):
        raise click.UsageError("--init with a prepared corpus: prepare it with the pretrained model's tokenizer "
                               "or give the text with --data")

    return train_gpt(
        run["out"], data=data, preset=preset, init=init,
        model_overrides=dict(num_layers=num_layers, num_heads=num_heads, hidden_dim=hidden_dim,
                             intermediate_dim=intermediate_dim, max_length=max_length, dropout=dropout,
                             position_embedding=position_embedding),
        tokenizer_kind=tokenizer_kind, vocabulary_size=vocab_size, seq_len=seq_len, val_fraction=val_fraction,
        text_field=text_field, train_config=run["train_config"], resume=run["resume"],
        explicit_train_changes=run["explicit"], command=run["command"], lora=lora, teacher=teacher,
        teacher_precision=teacher_precision)
