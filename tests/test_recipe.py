"""The recipe: a fingerprint of the data (known answers) and the rule behind each choice of the plan."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segforge.config import load_config
from segforge.data import create_dataset
from segforge.data.class_weights import ClassPixels, median_frequency_weights
from segforge.data.fingerprint import Fingerprint, fingerprint
from segforge.training.budget import describe_seconds, fit_steps
from segforge.training.recipe import eval_steps, plan, warmup_steps


def make_fingerprint(**changes) -> Fingerprint:
    """A two-class, single-channel, orientation-free dataset of 20 images of 512x512; ``changes`` override."""
    shares = changes.pop("class_share", (0.78, 0.22))
    pixels = ClassPixels(
        np.array([int(s * 1e6) for s in shares]), np.full(len(shares), 10**6), np.full(len(shares), 20)
    )
    values = dict(
        images=20,
        median_size=(512, 512),
        min_size=(512, 512),
        channels=1,
        dtype="uint8",
        max_value=255.0,
        num_classes=len(shares),
        class_share=tuple(shares),
        ignored_share=0.0,
        mean=(0.5,),
        std=(0.2,),
        up_down=0.02,
        left_right=0.02,
        class_pixels=pixels,
        raw_values=tuple(range(len(shares))),
        classes=tuple(f"c{i}" for i in range(len(shares))),
    )
    return Fingerprint(**(values | changes))


def planned(fp: Fingerprint, **config):
    return plan(load_config(None, {"data.root": "x"} | config), fp)


def test_micrographs_get_every_orientation_and_elastic_deformation_scenes_stay_upright() -> None:
    config, _ = planned(make_fingerprint())
    assert {"hflip", "vflip", "rotate", "elastic"} <= set(config.data.augmentation)
    config, choices = planned(make_fingerprint(channels=3, up_down=0.6, mean=(0.5,) * 3, std=(0.2,) * 3))
    assert "hflip" in config.data.augmentation and not {"vflip", "rotate", "elastic"} & set(config.data.augmentation)
    reason = next(c.reason for c in choices if c.key == "data.augmentation")
    assert "top and bottom differ (0.60): an upright scene, no vertical flips" in reason
    config, _ = planned(make_fingerprint(channels=3, mean=(0.5,) * 3, std=(0.2,) * 3))  # RGB, no up and down
    assert "vflip" in config.data.augmentation and "elastic" not in config.data.augmentation


def test_a_rare_class_adds_dice_and_a_strong_imbalance_softened_median_frequency_weights() -> None:
    config, _ = planned(make_fingerprint(class_share=(0.5, 0.5)))
    assert config.loss.name == "ce" and config.data.class_weights == "none"
    config, choices = planned(make_fingerprint())  # 22 % of two classes is under half of an even share
    assert config.loss.name == "ce+dice" and config.data.class_weights == "none"
    shares = (0.6, 0.3, 0.08, 0.02)
    fp = make_fingerprint(class_share=shares)
    config, choices = planned(fp)
    expected = median_frequency_weights(fp.class_pixels.class_pixels, fp.class_pixels.present_pixels) ** 0.5
    assert config.loss.name == "ce+dice"
    np.testing.assert_allclose(config.data.class_weights, expected, atol=1e-4)
    assert "class shares differ 30x" in next(c.reason for c in choices if c.key == "data.class_weights")


def test_crop_and_batch_follow_the_image_size() -> None:
    config, _ = planned(make_fingerprint())
    assert (config.data.crop_size, config.data.batch_size) == (256, 4)
    config, _ = planned(make_fingerprint(median_size=(64, 64), min_size=(60, 60)))
    assert (config.data.crop_size, config.data.batch_size) == (0, 20)  # whole images, at most the image count
    config, _ = planned(make_fingerprint(median_size=(300, 300), min_size=(300, 300)))
    assert (config.data.crop_size, config.data.batch_size) == (0, 3)


def test_what_the_user_set_is_kept_and_shown_as_theirs() -> None:
    config, choices = planned(
        make_fingerprint(),
        **{"model.name": "segnet", "optimizer.lr": 0.02, "data.crop_size": 0, "data.augmentation": {}},
    )
    assert (config.model.name, config.model.encoder, config.optimizer.lr) == ("segnet", None, 0.02)
    assert config.data.crop_size == 0 and config.data.augmentation == {}
    given = {c.key for c in choices if c.given}
    assert {"model.name", "optimizer.lr", "data.crop_size", "data.augmentation"} <= given
    assert "(set by you)" in next(c.format() for c in choices if c.key == "optimizer.lr")
    assert config.optimizer.name == "adamw" and config.data.num_classes == 2


def test_the_length_is_forty_passes_within_bounds_unless_given() -> None:
    assert planned(make_fingerprint())[0].train.iterations == 1000  # 40 x 20 / 4 = 200: at least 1,000
    assert planned(make_fingerprint(images=2000))[0].train.iterations == 20000
    assert planned(make_fingerprint(images=400))[0].train.iterations == 4000
    config, _ = planned(make_fingerprint(), **{"train.epochs": 3})
    assert config.train.iterations is None and config.train.epochs == 3
    config, _ = planned(make_fingerprint(), **{"train.time_budget": "30m"})
    assert config.train.iterations is None


def test_schedule_helpers_known_answers() -> None:
    assert [warmup_steps(n) for n in (10, 400, 10**5)] == [1, 20, 100]
    assert eval_steps(3000) == 200 and eval_steps(10) == 1
    assert eval_steps(3000, validation_seconds=30, step_seconds=0.5) == 600  # validation at most a tenth
    # 100 s left after 10 s: 100 - 20 (final) = 80 s at 1 s per step plus 2 s per 10 steps of validation
    assert (
        fit_steps(110, elapsed=10, step=5, step_seconds=1.0, validation_seconds=2.0, eval_steps=10, final_seconds=20)
        == 5 + 66
    )
    assert fit_steps(10, elapsed=30, step=5, step_seconds=1.0, validation_seconds=0, eval_steps=1, final_seconds=0) == 5
    assert [describe_seconds(s) for s in (42, 95, 4000)] == ["42 s", "1 min 35 s", "1 h 06 min"]


def test_a_refitted_total_keeps_the_learning_rate_continuous_and_ends_it_at_zero() -> None:
    import torch

    from segforge.config import ScheduleConfig
    from segforge.training.loop import Progress
    from segforge.training.optim import create_scheduler

    run = Progress(total_steps=100, eval_steps=10, warmup_steps=0, steps_per_epoch=10)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = create_scheduler(optimizer, ScheduleConfig(name="poly", power=1.0), progress=run)
    rates = []
    for step in range(1, 61):
        optimizer.step()
        scheduler.step()
        run.step = step
        if step == 20:
            run.refit(40)  # fewer steps fit than planned: 0.8 of the rate left, over 20 steps
        if step == 30:
            run.refit(60)  # more: 0.4 left, now over 30 steps
        rates.append(optimizer.param_groups[0]["lr"])
    assert rates[19] == pytest.approx(0.8) and rates[20] == pytest.approx(0.76)  # no jump either way
    assert rates[29] == pytest.approx(0.4) and rates[30] == pytest.approx(0.4 - 0.4 / 30)
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(rates)) and rates[-1] == pytest.approx(0.0)
    assert run.decayed(60) == 1.0 and run.decayed(1000) == 1.0


def _write(root: Path, name: str, image: np.ndarray, mask: np.ndarray) -> None:
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / "images" / f"{name}.png")
    Image.fromarray(mask).save(root / "masks" / f"{name}.png")


def test_fingerprint_of_a_folder_known_answers(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (8, 10), dtype=np.uint8) for _ in range(3)]
    sky = np.zeros((8, 10), np.uint8)
    sky[:4] = 2  # class 2 only in the top half, class 1 only in the bottom half: a scene with an up and a down
    sky[6:] = 1
    for i, image in enumerate(images):
        _write(tmp_path, f"s{i}", image, sky)
    fp = fingerprint(create_dataset("folder", tmp_path, "all"), progress=False)
    assert (fp.images, fp.median_size, fp.channels, fp.dtype, fp.num_classes) == (3, (8, 10), 1, "uint8", 3)
    assert fp.class_share == pytest.approx((0.25, 0.25, 0.5))
    assert fp.up_down == pytest.approx(1.0) and fp.left_right == pytest.approx(0.0)
    pixels = np.stack(images).astype(np.float64) / 255
    assert fp.mean == pytest.approx((pixels.mean(),)) and fp.std == pytest.approx((pixels.std(),))
    checker = np.indices((8, 10)).sum(0) % 2  # the same classes everywhere
    _write(tmp_path / "even", "a", images[0], checker.astype(np.uint8))
    _write(tmp_path / "even", "b", images[1], 1 - checker.astype(np.uint8))
    even = fingerprint(create_dataset("folder", tmp_path / "even", "all"), progress=False)
    assert even.up_down == pytest.approx(0.0) and even.num_classes == 2


def test_fingerprint_stops_on_what_the_doctor_calls_an_error(tmp_path: Path) -> None:
    _write(tmp_path, "a", np.zeros((4, 4), np.uint8), np.array([[0, 255]] * 8, np.uint8).reshape(4, 4))
    with pytest.raises(
        ValueError,
        match=r"the train data cannot be trained on as it is:\n- \[train\] masks store a "
        r"binary task as 0 and 255.*\n  fix: .*`segforge train --data DATA_FOLDER "
        r"--label-map 255=1`",
    ):
        fingerprint(create_dataset("folder", tmp_path, "all"), progress=False)


def test_a_fingerprint_is_frozen_and_describes_itself() -> None:
    fp = make_fingerprint()
    with pytest.raises(dataclasses.FrozenInstanceError):
        fp.images = 3  # type: ignore[misc]
    lines = fp.describe()
    assert lines[0].startswith("20 labelled images, median 512x512 (WxH)") and "c1 22.0%" in lines[1]


def test_rgb_images_start_from_installed_imagenet_weights_with_their_normalisation(monkeypatch) -> None:
    from segforge.encoders import pretrained

    rgb = make_fingerprint(channels=3, mean=(0.3, 0.4, 0.5), std=(0.2,) * 3)
    monkeypatch.setattr(pretrained, "available_offline", lambda encoder: encoder == "efficientnet_lite0")
    config, choices = planned(rgb)
    assert (config.model.name, config.model.encoder, config.model.encoder_weights) == (
        "unet_padded",
        "efficientnet_lite0",
        "imagenet",
    )
    assert (config.data.mean, config.data.std) == pretrained.normalisation("efficientnet_lite0")
    reasons = {c.key: c.reason for c in choices}
    assert "ImageNet-pretrained" in reasons["model.encoder"]
    assert "nothing to download" in reasons["model.encoder_weights"]
    assert "ImageNet weights were trained with" in reasons["data.mean/std"]

    config, _ = planned(make_fingerprint())  # one channel (micrographs): from scratch, the data's statistics
    assert (config.model.encoder, config.model.encoder_weights, config.data.mean) == ("unet16", None, [0.5])
    config, _ = planned(rgb, **{"model.encoder": "unet16"})  # the user's encoder is kept, from scratch
    assert config.model.encoder_weights is None and config.data.mean == [0.3, 0.4, 0.5]

    monkeypatch.setattr(pretrained, "available_offline", lambda encoder: False)
    config, _ = planned(rgb)  # nothing installed: nothing is downloaded unasked
    assert (config.model.encoder, config.model.encoder_weights) == ("unet16", None)
    config, choices = planned(make_fingerprint(), **{"model.encoder_weights": "imagenet"})  # asked for: downloaded
    assert config.model.encoder == "resnet34" and config.data.mean == pretrained.normalisation("resnet34", 1)[0]
    assert "not installed" in next(c.reason for c in choices if c.key == "model.encoder")
