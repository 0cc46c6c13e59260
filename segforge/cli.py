"""The ``segforge`` command line: ``segforge models --size 512``."""

from __future__ import annotations

import argparse
import sys

from segforge import __version__


def _models(args: argparse.Namespace) -> int:
    from segforge.summary import summary_table

    print(f"Architectures at {args.size}x{args.size}, {args.num_classes} classes, batch 1 "
          "(GFLOPs: one forward pass, multiply-add = 2 FLOPs)\n")
    print(summary_table(args.size, num_classes=args.num_classes))
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segforge", description="Semantic segmentation with the papers' architectures.")
    parser.add_argument("--version", action="version", version=f"segforge {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    models = commands.add_parser("models", help="list every architecture with its parameters and GFLOPs")
    models.add_argument("--size", type=_positive_int, default=512, help="input side length in pixels (default 512)")
    models.add_argument("--num-classes", type=_positive_int, default=21, help="output classes (default 21, PASCAL VOC)")
    models.set_defaults(run=_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except ValueError as err:
        print(f"segforge {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
