"""The training recipe for instance data: ``plan_instances(config, fingerprint)`` fills what the config leaves open.

The rules, like the semantic recipe's (``segforge.training.recipe``), read only the fingerprint and the device:

- **model**: Mask R-CNN (``mask_rcnn``: a box, a class, a score and a mask per object) on ResNet-18, from
  scratch unless ``model.encoder_weights`` names ImageNet weights. (Not the semantic recipe's pretrained
  EfficientNet-Lite0: in one trial on the built-in touching objects, a round of one step and a validation took
  30 s on it against 2.5 s on ResNet-18, and its first mask loss was 13.3 against 7.0; not investigated
  further, the feature pyramid has no normalisation to absorb its features' scale.)
- **crop and batch**: random crops of 384 px (768 on a GPU) of larger images, whole images otherwise; a batch of
  about as many pixels as 4 images of 128² on a CPU, at least 2 (Mask R-CNN's heads cost the same per image
  whatever its size: 128 RoIs through the box head, up to 32 through the mask head, so small images come in
  small batches, and more steps fit a time budget).
- **normalisation**: the pretrained encoder's, else the training images' statistics.
- **augmentation**: horizontal flips, small scale and brightness/contrast changes (no vertical flips or
  rotations: the fingerprint of objects cannot tell an upright scene from a micrograph).
- **optimizer**: AdamW 1e-3 with a linear warm-up and poly decay, as the semantic recipe's (a 10-minute run on
  the built-in touching objects reaches a mask AP50 of 83.8: ``bench/instances.py``, README).
- **length**: as the semantic recipe's.
"""

from __future__ import annotations

import copy

from segforge.config import Config
from segforge.instances.fingerprint import InstanceFingerprint
from segforge.training.recipe import Choice, choose_input_size, choose_length, choose_normalisation, chooser

MODEL = "mask_rcnn"
SCRATCH_ENCODER = "resnet18"
CPU_CROP, GPU_CROP = 384, 768
CPU_PIXELS_PER_STEP = 4 * 128 * 128
GPU_PIXELS_PER_STEP = 8 * 512 * 512
LEARNING_RATE = 1e-3


def plan_instances(config: Config, fp: InstanceFingerprint, *, cuda: bool = False) -> tuple[Config, list[Choice]]:
    """Fills every value ``config`` leaves at None from the instance fingerprint (see the module docstring).

    Raises:
        ValueError: a semantic model asked for on instance data.
    """
    config = copy.deepcopy(config)
    choices: list[Choice] = []
    choose = chooser(choices)
    model, data = config.model, config.data
    choose(data, "num_classes", fp.num_classes, "the instances' classes, background included")
    name = choose(model, "name", MODEL, "instance masks: Mask R-CNN, a box, class, score and mask per object")
    if name != MODEL:
        raise ValueError(
            f"the data at {data.root} hold instances (objects), which model {name!r} cannot learn: drop --model "
            f"(or use --model {MODEL}); to train a semantic model, give masks of classes (the folder layout)"
        )
    choose(
        model,
        "encoder",
        SCRATCH_ENCODER,
        "ResNet-18"
        + (": its ImageNet weights" if model.encoder_weights else ", from scratch")
        + " (not the installed EfficientNet-Lite0: segforge/training/instance_recipe.py says why)",
    )
    choose_input_size(
        data,
        fp,
        choose,
        crop=GPU_CROP if cuda else CPU_CROP,
        pixels_per_step=GPU_PIXELS_PER_STEP if cuda else CPU_PIXELS_PER_STEP,
        max_batch=16,
    )
    choices.append(choose_normalisation(config, fp))
    augmentation = {"hflip": {}, "scale": {"scale_range": [0.8, 1.25]}, "jitter": {}}
    choose(data, "augmentation", augmentation, "flips, scale and brightness: moves boxes and masks with the image")
    choose(config.optimizer, "name", "adamw", "adapts per parameter: robust without tuning")
    choose(config.optimizer, "lr", LEARNING_RATE, "AdamW's usual rate, after a linear warm-up")
    choose(config.schedule, "name", "poly", "decays to zero at the last step")
    choose_length(config.train, fp.images, data.batch_size, choose, choices)
    return config, choices
