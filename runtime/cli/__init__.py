"""`fssam2`: the command line (argparse and dispatch only)."""

from .commands import main, parser, precision_spec

__all__ = ["main", "parser", "precision_spec"]
