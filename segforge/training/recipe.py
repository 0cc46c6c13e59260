"""A training recipe chosen from the data: ``plan(config, fingerprint)`` fills what the config leaves open.

After nnU-Net's idea (a dataset fingerprint decides the pipeline), kept small enough to read in
one sitting. Every value a user set (in the YAML file, with a flag or ``--set``) stays as it is;
each value left at None is chosen by one rule below, and the plan prints each choice with its
reason. The rules look only at the fingerprint of the training split and at the device, never at
a dataset's name:

- **model**: U-Net (padded, batch norm): its full-resolution skip connections keep one-pixel
  structures. For RGB images, when ImageNet weights are installed (``segforge[pretrained]``), on
  EfficientNet-Lite0 starting from them; otherwise on its own encoder from scratch, on a CPU at a
  quarter of the paper's widths (16 → 256 channels: 1/16 of the FLOPs, so a time budget buys many
  more steps), on a GPU at the paper's widths.
- **crop and batch**: random crops of 256 px (512 on a GPU) when the images are larger, whole
  images otherwise; the batch holds about as many pixels as 4 crops of 256² (CPU).
- **optimizer**: AdamW, learning rate 1e-3, linear warm-up over 5 % of the steps (at most 100),
  then poly decay to zero at the last step.
- **loss**: cross entropy, plus Dice when a class is rare (less than half of its share if all
  classes were equally frequent): Dice weighs every class alike, whatever its pixel count.
- **class weights**: with three or more classes whose shares differ more than tenfold, the square
  root of SegNet's median-frequency weights (the full weights over-predict the rarest classes).
- **augmentation**: flips and small scale and brightness/contrast changes; vertical flips and
  free rotation only when the classes' layout has no up and down (the masks' top and bottom
  halves hold the same classes: micrographs, satellite tiles), never for road scenes; the U-Net
  paper's elastic deformation for such data with one or two channels (microscopy-like).
- **normalisation**: what pretrained weights were trained with; from scratch, the training
  images' per-channel mean and standard deviation.
- **length**: with ``train.time_budget``, the steps that fit (measured by the training loop);
  otherwise 40 passes over the training images, 1,000 to 20,000 steps. Validation about 15
  times per run (``train.eval_steps``), fewer when it would take over a tenth of the time.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from segforge.config import Config
from segforge.data.class_weights import median_frequency_weights
from segforge.data.fingerprint import Fingerprint
from segforge.encoders import pretrained
from segforge.encoders.weights import IMAGENET

CPU_CROP, GPU_CROP = 256, 512
CPU_PIXELS_PER_STEP = 4 * 256 * 256  # a batch of 4 crops of 256² (about 0.6 s per step on 2 cores)
GPU_PIXELS_PER_STEP = 8 * 512 * 512
ORIENTATION_FREE = 0.1  # top/bottom class-share distance below which up and down look alike
RARE = 0.5  # a class is rare below this fraction of an even share (1 / classes)
IMBALANCE = 10.0  # class shares that differ more than this get (softened) median-frequency weights
VALIDATIONS = 15  # validations per run, when they cost less than a tenth of the time
MAX_WARMUP = 100  # steps of linear warm-up at most
PRETRAINED_ENCODER = "efficientnet_lite0"  # ImageNet weights that install from the registry (segforge[pretrained])
DOWNLOADED_ENCODER = "resnet34"  # for --encoder-weights imagenet without an encoder when those are not installed


@dataclass(frozen=True)
class Choice:
    """One line of the plan: a config key, its value, why, and whether the user set it."""

    key: str
    value: Any
    reason: str
    given: bool = False

    def format(self) -> str:
        value = _show(self.value)
        why = "(set by you)" if self.given else self.reason
        return f"  {self.key:<22}{value:<24} {why}" if len(value) < 24 else f"  {self.key:<22}{value}\n{'':<47} {why}"


def _show(value: Any) -> str:
    """A config value as the plan prints it: augmentations by name, numbers short."""
    if isinstance(value, dict):
        return (
            ", ".join(
                key if not options else f"{key} " + " ".join(f"{_show(v)}" for v in options.values())
                for key, options in value.items()
            )
            or "none"
        )
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(v) for v in value[:6]) + (", ...]" if len(value) > 6 else "]")
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _rare_classes(fp: Fingerprint) -> list[int]:
    return [c for c, share in enumerate(fp.class_share) if share < RARE / fp.num_classes]


def _augmentation(fp: Fingerprint) -> tuple[dict, str]:
    augmentation: dict[str, dict] = {}
    reasons = []
    if fp.left_right < ORIENTATION_FREE:
        augmentation["hflip"] = {}
    free = fp.up_down < ORIENTATION_FREE
    if free:
        augmentation |= {"vflip": {}, "rotate": {"limit_degrees": 180.0}}
        reasons.append(f"top and bottom hold the same classes ({fp.up_down:.2f}): any orientation")
    else:
        reasons.append(f"top and bottom differ ({fp.up_down:.2f}): an upright scene, no vertical flips")
    augmentation |= {"scale": {"scale_range": [0.8, 1.25]}, "jitter": {}}
    if free and fp.channels <= 2:
        augmentation["elastic"] = {}
        reasons.append("one or two channels and no orientation: microscopy-like, elastic deformation (U-Net)")
    return augmentation, "; ".join(reasons)


def _class_weights(fp: Fingerprint) -> tuple[list[float] | str, str]:
    present = [share for share in fp.class_share if share > 0]
    ratio = max(present) / min(present)
    if fp.num_classes < 3 or ratio < IMBALANCE:
        return "none", (
            f"class shares within {IMBALANCE:g}x of each other"
            if ratio < IMBALANCE
            else "two classes: the Dice term balances them"
        )
    weights = median_frequency_weights(fp.class_pixels.class_pixels, fp.class_pixels.present_pixels) ** 0.5
    return [round(float(w), 4) for w in weights], (
        f"class shares differ {ratio:.0f}x: square root of the median-frequency weights (SegNet)"
    )


def plan(config: Config, fp: Fingerprint, *, cuda: bool = False) -> tuple[Config, list[Choice]]:
    """Fills every value ``config`` leaves at None from the fingerprint.

    Args:
        config: the validated config; values that are not None were set by the user and are kept.
        fp: the training split's fingerprint.
        cuda: training runs on a GPU (wider model, larger crops and batches).

    Returns:
        ``(the completed config, the choices in print order)``. The number of steps of a run with a
        time budget is fitted by the training loop, which measures them.
    """
    config = copy.deepcopy(config)
    choices: list[Choice] = []
    choose = chooser(choices)
    model, data, train = config.model, config.data, config.train
    choose(data, "num_classes", fp.num_classes, "from the masks' labels")
    _choose_model(model, fp, choose, cuda=cuda)
    choose_input_size(
        data,
        fp,
        choose,
        crop=GPU_CROP if cuda else CPU_CROP,
        pixels_per_step=GPU_PIXELS_PER_STEP if cuda else CPU_PIXELS_PER_STEP,
        note=f" (a series: {fp.dates} dates' pixels)" if fp.inputs == "series" else "",
    )
    choices.append(choose_normalisation(config, fp))
    augmentation, why = _augmentation(fp)
    choose(data, "augmentation", augmentation, why)
    rare = _rare_classes(fp)
    if rare:
        shares = ", ".join(f"{fp.classes[c]} {fp.class_share[c]:.1%}" for c in rare[:3])
        shares += ", ..." if len(rare) > 3 else ""
        choose(config.loss, "name", "ce+dice", f"rare classes ({shares}): Dice weighs every class alike")
    else:
        choose(config.loss, "name", "ce", "no class is rare: cross entropy")
    weights, why = _class_weights(fp)
    choose(data, "class_weights", weights, why)
    choose(config.optimizer, "name", "adamw", "adapts per parameter: robust without tuning")
    choose(config.optimizer, "lr", 1e-3, "AdamW's usual rate, after a linear warm-up")
    choose(config.schedule, "name", "poly", "decays to zero at the last step")
    choose_length(train, fp.images, data.batch_size, choose, choices)
    return config, choices


def chooser(choices: list[Choice]) -> Callable[[Any, str, Any, str], Any]:
    """``choose(section, key, value, reason)``: sets ``section.key`` (a config section) to ``value`` unless the user
    set it, records the line in ``choices``, and returns the value that stands."""

    def choose(section: Any, key: str, value: Any, reason: str) -> Any:
        given = getattr(section, key) is not None
        if given:
            value = getattr(section, key)
        else:
            setattr(section, key, value)
        name = f"{type(section).__name__.removesuffix('Config').lower()}.{key}"
        choices.append(Choice(name, value, reason, given))
        return value

    return choose


def choose_length(train: Any, images: int, batch_size: int, choose: Any, choices: list[Choice]) -> None:
    """The run's length when the user gave none: 40 passes over the images, 1,000 to 20,000 steps."""
    if train.time_budget is None and train.epochs is None and train.iterations is None:
        steps = int(min(20000, max(1000, math.ceil(40 * images / batch_size))))
        choose(
            train,
            "iterations",
            steps,
            "40 passes over the training images (1,000-20,000 steps); --time-budget fits them to a time instead",
        )
    if train.time_budget is not None:
        choices.append(Choice("train.time_budget", train.time_budget, "steps fitted to it after the first steps", True))


def _choose_model(model: Any, fp: Fingerprint, choose: Any, *, cuda: bool) -> None:
    """The architecture for the data's kind of input, and its encoder (and for time series, how it reads dates)."""
    if fp.inputs == "series":
        name = choose(model, "name", "temporal_unet", "image time series: a U-Net that reads the dates as a sequence")
    else:
        name = choose(model, "name", "unet_padded", "U-Net: learns from few images, keeps fine detail")
    if name == "unet_padded":
        _choose_encoder(model, fp, choose, cuda=cuda)
    elif name == "temporal_unet":
        choose(
            model,
            "encoder",
            "unet" if cuda else "unet16",
            "shared by every date, from scratch; "
            + ("the paper's widths (64-1024)" if cuda else "a quarter of U-Net's widths (16-256) on a CPU"),
        )
        choose(model, "temporal", "attention", "U-TAE's temporal attention: learns fastest (bench/temporal.py)")


def choose_input_size(
    data: Any, fp: Any, choose: Any, *, crop: int, pixels_per_step: int, max_batch: int = 32, note: str = ""
) -> None:
    """Random ``crop``-px crops of images over 1.25 ``crop`` (whole smaller ones), and a batch of about
    ``pixels_per_step`` pixels (a series counts each date's): 2 to ``max_batch`` samples, at most the images."""
    side = min(fp.median_size)
    if side > crop * 1.25:
        crop_size = choose(data, "crop_size", crop, f"images are {side}+ px: random {crop}-px crops")
    else:
        crop_size = choose(data, "crop_size", 0, f"images are {side} px or less: whole images (0)")
    pixels = (crop_size**2 if crop_size else fp.median_size[0] * fp.median_size[1]) * getattr(fp, "dates", 1)
    batch = max(2, min(max_batch, round(pixels_per_step / pixels), fp.images))
    choose(data, "batch_size", batch, f"about {pixels_per_step / 1e6:.2g} M pixels per step{note}")


def choose_normalisation(config: Config, fp: Fingerprint) -> Choice:
    """Fills ``data.mean``/``std`` (the pretrained encoder's, else the training images'); returns the choice."""
    model, data = config.model, config.data
    given = data.mean is not None
    if given:
        why = ""
    elif model.encoder_weights is not None:
        data.mean, data.std = pretrained.normalisation(model.encoder, fp.channels)
        why = "what the encoder's ImageNet weights were trained with"
    else:
        data.mean, data.std = [round(m, 6) for m in fp.mean], [round(s, 6) for s in fp.std]
        why = "the training images' per-channel statistics"
        constant = [c for c, s in enumerate(data.std) if s < 1e-6]
        if constant:  # a blank band: nothing to learn from it, and no scale to divide by
            data.std = [1.0 if c in constant else s for c, s in enumerate(data.std)]
            why += f"; channel(s) {constant} hold one value in every training image: std 1 there"
    return Choice("data.mean/std", f"{_show(data.mean)} / {_show(data.std)}", why, given)


def _choose_encoder(model: Any, fp: Fingerprint, choose: Any, *, cuda: bool) -> None:
    """U-Net's encoder: ImageNet-pretrained EfficientNet-Lite0 for RGB images when its weights are installed
    (or when ``encoder_weights`` asks for ImageNet weights), U-Net's own from scratch otherwise."""
    wanted = model.encoder_weights == IMAGENET and model.encoder is None
    offline = pretrained.available_offline(PRETRAINED_ENCODER)
    if wanted or (model.encoder is None and model.encoder_weights is None and fp.channels == 3 and offline):
        encoder = PRETRAINED_ENCODER if offline else DOWNLOADED_ENCODER
        choose(
            model,
            "encoder",
            encoder,
            "ImageNet-pretrained: features learnt from 1.3 M photographs, a head start "
            "on RGB images" + ("" if offline else f" ({PRETRAINED_ENCODER}'s are not installed)"),
        )
        source = pretrained.IMAGENET[encoder].package
        choose(
            model,
            "encoder_weights",
            IMAGENET,
            f"installed with segforge[pretrained] ({source}): nothing to download"
            if offline
            else "downloaded once into the torch hub cache",
        )
    else:
        why = (
            ""
            if fp.channels == 3 or model.encoder is not None
            else f"{fp.channels} channel(s), not RGB photographs: from scratch; "
        )
        choose(
            model,
            "encoder",
            "unet" if cuda else "unet16",
            why
            + (
                "the paper's widths (64-1024)"
                if cuda
                else "a quarter of the paper's widths (16-256): 1/16 of the FLOPs, many more steps per minute on a CPU"
            ),
        )


def warmup_steps(total_steps: int) -> int:
    """Linear warm-up over 5 % of the steps, at most 100."""
    return min(MAX_WARMUP, max(1, total_steps // 20))


def eval_steps(total_steps: int, *, validation_seconds: float | None = None, step_seconds: float | None = None) -> int:
    """Steps between validations: about ``VALIDATIONS`` per run, fewer when each would cost more than a
    tenth of the training time between them."""
    every = max(1, math.ceil(total_steps / VALIDATIONS))
    if validation_seconds and step_seconds:
        every = max(every, math.ceil(10 * validation_seconds / step_seconds))
    return min(every, total_steps)
