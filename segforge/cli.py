"""The ``segforge`` command line: ``segforge models --size 512``, ``segforge doctor --data DIR``."""

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


def _doctor(args: argparse.Namespace) -> int:
    from segforge.data.doctor import diagnose

    report = diagnose(args.data, layout=args.format, split=args.split, num_classes=args.num_classes,
                      ignore_index=args.ignore_index, colour_map=args.palette, label_map=args.label_map)
    print(report.format())
    return report.exit_code


def _label_map(text: str) -> dict[int, int]:
    """``"255=1"`` or ``"0=0,255=1"`` → ``{255: 1}``."""
    mapping = {}
    for part in filter(None, text.split(",")):
        raw, _, label = part.partition("=")
        try:
            mapping[int(raw)] = int(label)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected RAW=LABEL pairs like 255=1, got {part!r}") from None
    return mapping


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
    doctor = commands.add_parser("doctor", help="check a dataset: splits, sizes, label values, class weights, problems",
                                 description="Reads a dataset once and reports what is in it and what would make "
                                 "training wrong, with the fix for each problem. Exits 1 when a problem is an error.")
    doctor.add_argument("--data", required=True, help="the dataset folder")
    doctor.add_argument("--format", default="auto",
                        choices=["auto", "folder", "voc", "cityscapes", "camvid", "ade20k", "isbi"],
                        help="dataset layout (default: detected from the folder structure)")
    doctor.add_argument("--split", default=None, help="scan only this split (default: all; every split is counted)")
    doctor.add_argument("--num-classes", type=_positive_int, default=None,
                        help="number of classes (folder layout; default: inferred from the labels, with a warning)")
    doctor.add_argument("--ignore-index", type=int, default=None, help="label value that marks unlabelled pixels")
    doctor.add_argument("--palette", default=None, metavar="FILE",
                        help="colour mapping for RGB masks: a YAML/JSON file {name: [r, g, b]} or 'name=r,g,b;...'")
    doctor.add_argument("--label-map", type=_label_map, default=None, metavar="RAW=LABEL,...",
                        help="replace raw mask values, e.g. 255=1 for masks stored as 0/255")
    doctor.set_defaults(run=_doctor)
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
