"""Run as `python zoo_commands.py COMMANDS_JSON` (a list of `zoo` argument lists) under some
KERAS_BACKEND: runs the commands one after another in this one process, as `zoo` runs each, and
stops at the first that fails (its one-line error on stderr, exit status 1). For tests that need
several commands on another backend: a process start costs 5 to 10 s of imports on a 2-core
machine, once here instead of once per command."""

import json
import sys

import click

from cli.main import cli

for args in json.loads(sys.argv[1]):
    sys.argv = ["zoo", *args]  # what a run records as its command
    try:
        cli.main(args, prog_name="zoo", standalone_mode=False)
    except click.ClickException as error:
        error.show()
        sys.exit(1)
