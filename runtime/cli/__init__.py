"""`fssam2`: the command line (argparse and dispatch only)."""

from .commands import main, parser
from .common import add_runtime_options, options_from_args, precision_spec

__all__ = ["add_runtime_options", "main", "options_from_args", "parser", "precision_spec"]
