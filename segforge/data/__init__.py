"""Segmentation datasets in every common layout, a dataset doctor, and built-in synthetic data.

>>> from segforge.data import create_dataset, compute_stats, diagnose
>>> train = create_dataset("camvid", "data/camvid", split="train")      # or "auto"
>>> image, mask = train[0]            # (3, 360, 480) float32, (360, 480) int64
>>> diagnose("data/camvid").format()  # what `segforge doctor --data data/camvid` prints
"""

from __future__ import annotations

# Importing a layout module registers it in DATASETS (create_dataset, detect_layout).
from segforge.data.ade20k import ADE20KDataset
from segforge.data.base import SegmentationDataset, default_palette, scale_image
from segforge.data.camvid import CamVidDataset
from segforge.data.cityscapes import CityscapesDataset
from segforge.data.class_weights import (
    ClassPixels,
    class_pixel_counts,
    class_weights,
    count_class_pixels,
    median_frequency_weights,
)
from segforge.data.colour import ColourMap, load_colour_map
from segforge.data.doctor import DoctorReport, Problem, SplitSummary, diagnose
from segforge.data.folder import FolderDataset
from segforge.data.io import DatasetError, read_image, read_mask, read_volume
from segforge.data.isbi import ISBIDataset
from segforge.data.normalisation import combine_moments, compute_stats, image_moments
from segforge.data.pastis import PastisDataset
from segforge.data.registry import DATASETS, create_dataset, detect_layout, list_dataset_layouts
from segforge.data.series import SeriesDataset
from segforge.data.series_folder import SeriesFolderDataset
from segforge.data.synthetic import SyntheticDataset, synthetic_sample, write_synthetic_dataset
from segforge.data.transforms import (
    Compose,
    ElasticDeformation,
    HorizontalFlip,
    PhotometricJitter,
    RandomCrop,
    RandomScale,
    Rotate,
    VerticalFlip,
    build_transforms,
)
from segforge.data.voc import VOCDataset

__all__ = [
    "PastisDataset",
    "SeriesDataset",
    "SeriesFolderDataset",
    "Compose",
    "ElasticDeformation",
    "HorizontalFlip",
    "PhotometricJitter",
    "RandomCrop",
    "RandomScale",
    "Rotate",
    "VerticalFlip",
    "build_transforms",
    "DATASETS",
    "ADE20KDataset",
    "CamVidDataset",
    "CityscapesDataset",
    "ClassPixels",
    "ColourMap",
    "DatasetError",
    "DoctorReport",
    "FolderDataset",
    "ISBIDataset",
    "Problem",
    "SegmentationDataset",
    "SplitSummary",
    "SyntheticDataset",
    "VOCDataset",
    "class_pixel_counts",
    "class_weights",
    "combine_moments",
    "compute_stats",
    "image_moments",
    "count_class_pixels",
    "create_dataset",
    "default_palette",
    "detect_layout",
    "diagnose",
    "list_dataset_layouts",
    "load_colour_map",
    "median_frequency_weights",
    "read_image",
    "read_mask",
    "read_volume",
    "scale_image",
    "synthetic_sample",
    "write_synthetic_dataset",
]

# The instance-segmentation layouts (segforge.instances) register in DATASETS too; imported last, as they build on
# this package's modules.
from segforge.instances import coco_dataset as _coco_layout  # noqa: E402,F401  isort: skip
from segforge.instances import folder as _instance_folder_layout  # noqa: E402,F401  isort: skip
