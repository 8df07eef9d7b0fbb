"""The `gemma4` command line: `python -m gemma4 <command>` (or the `gemma4` script).

Commands are argparse subparsers; each registers its options with an `add_arguments(parser)` and
runs through a `main(args=...)` in its own module, imported only when that command runs.

    python -m gemma4 demo [--preset small-e2b] [--dtype bfloat16]
"""
from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    from gemma4 import demo  # noqa: PLC0415

    return demo.main(args=args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gemma4",
        description="Gemma 4 language models on gemma4's native operators.",
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>")

    from gemma4 import demo  # noqa: PLC0415

    p = sub.add_parser("demo", help="random-weight model: one forward pass, top-5 next tokens, timing",
                       description=demo.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_arguments(p)
    p.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:  # no command: say what there is
        parser.print_help()
        return 0
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
