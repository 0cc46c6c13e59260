"""The built-in synthetic data: seeded, any size and channel count, and learnable (classes look different)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from segforge.data import FolderDataset, SyntheticDataset, create_dataset, synthetic_sample, write_synthetic_dataset
from segforge.data.synthetic import synthetic_classes


@pytest.mark.parametrize("channels", [1, 3, 5])
@pytest.mark.parametrize("size", [(8, 8), (37, 53), 96])
def test_shapes_and_dtypes(channels: int, size: int | tuple[int, int]) -> None:
    image, mask = synthetic_sample(0, size=size, num_classes=5, channels=channels, seed=2)
    h, w = (size, size) if isinstance(size, int) else size
    assert image.shape == (h, w, channels) and image.dtype == np.uint8
    assert mask.shape == (h, w) and mask.dtype == np.int64
    assert 0 <= mask.min() and mask.max() < 5


def test_a_sample_depends_only_on_seed_and_index() -> None:
    a = synthetic_sample(7, seed=1)
    b = synthetic_sample(7, seed=1)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(synthetic_sample(7, seed=2)[1], a[1])
    assert not np.array_equal(synthetic_sample(8, seed=1)[1], a[1])


def test_every_class_appears_over_a_few_samples() -> None:
    masks = [synthetic_sample(i, size=48, num_classes=6, seed=0)[1] for i in range(20)]
    assert set(np.unique(np.concatenate([m.ravel() for m in masks]))) == set(range(6))


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_classes_are_separable_by_their_mean_value(channels: int) -> None:
    # the learnability invariant: pixels of different classes differ more than the noise
    samples = [synthetic_sample(i, size=64, num_classes=5, channels=channels, seed=0) for i in range(12)]
    images, masks = [s[0] for s in samples], [s[1] for s in samples]
    pixels = np.concatenate([im.reshape(-1, channels) for im in images]).astype(np.float64)
    labels = np.concatenate([m.ravel() for m in masks])
    means = np.stack([pixels[labels == c].mean(axis=0) for c in range(5)])
    spread = max(pixels[labels == c].std(axis=0).max() for c in range(5))
    distances = np.linalg.norm(means[:, None] - means[None], axis=-1)[np.triu_indices(5, 1)]
    assert distances.min() > spread


def test_class_names() -> None:
    assert synthetic_classes(6) == ["background", "disk", "rectangle", "triangle", "ring", "disk_2"]


def test_dataset_in_memory() -> None:
    dataset = SyntheticDataset(4, size=(24, 40), num_classes=3, channels=1, seed=5)
    assert len(dataset) == 4 and dataset.classes == ["background", "disk", "rectangle"]
    image, mask = dataset[3]
    assert image.shape == (1, 24, 40) and image.dtype == torch.float32 and mask.shape == (24, 40)
    np.testing.assert_array_equal(
        mask.numpy(), synthetic_sample(3, size=(24, 40), num_classes=3, channels=1, seed=5)[1]
    )
    with pytest.raises(IndexError, match="index 4 out of range"):
        dataset[4]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 1}, "need num_classes >= 2"),
        ({"channels": 0}, "channels >= 1"),
        ({"size": 4}, "at least 8x8 pixels, got 4x4"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SyntheticDataset(2, **kwargs)


@pytest.mark.parametrize("channels", [1, 3, 5])
def test_written_folder_reads_back_identically(tmp_path: Path, channels: int) -> None:
    root = write_synthetic_dataset(
        tmp_path, num_train=3, num_val=2, size=(20, 28), num_classes=4, channels=channels, seed=9
    )
    train = create_dataset("auto", root, "train")
    assert isinstance(train, FolderDataset) and len(train) == 3 and len(FolderDataset(root, "val")) == 2
    assert train.classes == synthetic_classes(4)
    memory = SyntheticDataset(5, size=(20, 28), num_classes=4, channels=channels, seed=9)
    for index in range(3):
        image, mask = train[index]
        expected_image, expected_mask = memory[index]
        torch.testing.assert_close(image, expected_image)
        torch.testing.assert_close(mask, expected_mask)
