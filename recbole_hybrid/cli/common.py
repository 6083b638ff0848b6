"""What every subcommand's parser and handler share."""

from recbole_hybrid.errors import UserError


def subparser(subparsers, name, summary, description, handler):
    """A subcommand whose extra `--key=value` arguments become RecBole settings."""
    parser = subparsers.add_parser(name, allow_abbrev=False, help=summary, description=description)
    parser.set_defaults(handler=handler)
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of an internal error on the console too")
    return parser


def config_files(args):
    """--config_files as RecBole takes them: several arguments, or one space-separated."""
    return [f for group in args.config_files for f in group.split()]


def print_line(line):
    """Prints a progress line at once (a log callback)."""
    print(line, flush=True)


def no_settings(command, overrides):
    """UserError where a command that takes no RecBole settings got some."""
    if overrides:
        raise UserError(f"{command} takes no --key=value settings, got {', '.join(overrides)}")
