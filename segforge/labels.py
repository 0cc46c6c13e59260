"""The label of pixels without a class, when a dataset names no ignore value of its own.

``NO_LABEL`` is -100: PyTorch's cross-entropy ``ignore_index`` default, never a class index. Datasets
give it to unlabelled pixels (``SegmentationDataset.unlabelled``; ISBI's test masks are all of it),
training records it as the run's ignore label, and the losses and metrics skip it.
"""

from __future__ import annotations

NO_LABEL = -100
