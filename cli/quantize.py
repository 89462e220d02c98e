"""`zoo quantize`."""

import json

import click

from cli.common import backend_option
from zoo.configs import QUANTIZATION_MODES


@click.command()
@backend_option
@click.argument("bundle", metavar="BUNDLE", type=click.Path())
@click.option("--mode", required=True, type=click.Choice(QUANTIZATION_MODES),
              help="int8: 8-bit weights, inputs quantized per token at every call (Keras's int8). "
                   "int4: 4-bit weights in groups of 128 with scales and zero points (Keras's int4).")
@click.option("--out", required=True, type=click.Path(), help="The quantized bundle's directory.")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary (sizes in bytes) as JSON.")
def quantize(bundle, mode, out, force, as_json):
    """Write an int8 or int4 copy of a bundle: Keras's Model.quantize on every Dense, EinsumDense
    and Embedding layer (layer norms, position tables and LSTM cells stay float).

    The quantized bundle loads like any other: `zoo generate`, `translate`, `classify`, `eval` and
    `serve` take it on every backend; `zoo eval QBUNDLE --baseline BUNDLE` scores it beside the
    float bundle.

    \b
    Example:
      zoo quantize bundles/shakespeare --mode int8 --out bundles/shakespeare-int8
      zoo eval bundles/shakespeare-int8 --baseline bundles/shakespeare
      zoo generate bundles/shakespeare-int8 --prompt "ROMEO." --temperature 0
    """
    from zoo.quantize import quantize_bundle

    result = quantize_bundle(bundle, out, mode, force=force)
    click.echo(json.dumps(result.to_dict()) if as_json else result.summary())
