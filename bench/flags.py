"""Command lines of the bench scripts that run train.py: their own flags, and any
`--config.a.b=value` overrides passed on to train.py."""


def parse_with_overrides(parser):
  """`parser.parse_args()` where `--config.a.b=value` flags (which argparse takes for unknown
  options) join the parser's positional `overrides`; any other unknown flag is an error."""
  args, extra = parser.parse_known_args()
  bad = [a for a in extra if not a.startswith("--config.")]
  if bad:
    parser.error(f"unrecognized arguments: {' '.join(bad)}")
  args.overrides = list(args.overrides) + extra
  return args
