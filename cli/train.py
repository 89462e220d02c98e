"""`zoo train`: one subcommand per model family, as the family registry declares them."""

import click

from cli.common import ZooGroup, backend_option
from zoo import families


class TrainGroup(ZooGroup):
    """Lists and loads the families' commands from the registry, on demand."""

    def list_commands(self, ctx):
        return families.names()

    def get_command(self, ctx, name):
        if name not in families.names():
            return None
        if name not in self.commands:  # once: click.option adds --backend to the command it decorates
            self.commands[name] = backend_option(families.get(name).train_command())
        return self.commands[name]


@click.group(cls=TrainGroup)
def train():
    """Train a model of one family: gpt (language model), bert (masked LM or classifier), seq2seq, ...

    \b
    Example:
      zoo train gpt --preset nano --max-steps 500 --out runs/shakespeare
      zoo train bert --task classify --out runs/language-id
      zoo train seq2seq --out runs/en-fr
    """
