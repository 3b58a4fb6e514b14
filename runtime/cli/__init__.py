"""`fssam2`: the command line, argparse and dispatch only (commands; the larger subcommands label and serve in their
own files); `add_runtime_options` / `options_from_args` (common) are the one runtime-options group."""

from .commands import main, parser
from .common import add_runtime_options, options_from_args, precision_spec

__all__ = ["add_runtime_options", "main", "options_from_args", "parser", "precision_spec"]
