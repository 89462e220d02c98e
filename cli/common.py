"""What every `zoo` command shares: the --backend option and one-line errors."""

import click

from zoo.backend import BACKENDS, select_backend
from zoo.errors import ZooError


def _set_backend(ctx, param, value):
    if value is not None or ctx.parent is None:
        try:
            select_backend(value)
        except ZooError as e:
            raise click.BadParameter(str(e), ctx=ctx, param=param) from None
    return value


def backend_option(command):
    """--backend, applied before the command body runs (and so before keras is imported)."""
    return click.option(
        "--backend", type=click.Choice(BACKENDS), callback=_set_backend, expose_value=False, is_eager=True,
        help="Keras backend; default $KERAS_BACKEND, else jax.")(command)


class ZooGroup(click.Group):
    """Turns ZooError (bad input) into click's one-line `Error: ...` and exit code 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ZooError as e:
            raise click.ClickException(str(e)) from None
