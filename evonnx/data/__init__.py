"""Data sets for retraining and evaluating offspring networks.

Everything is loaded into memory as a :class:`Dataset`: float32 samples (``N×C×H×W`` images or
``N×features`` vectors) and int64 class labels. :func:`load_dataset` accepts a ``.npz`` file, a
MNIST IDX folder, a CIFAR-10 ``cifar-10-batches-py`` folder, a folder of images per class, or a
built-in name (``mnist-demo``, ``digits``) that needs no download.
"""

from evonnx.data.dataset import (
    BUILTIN_NAMES,
    CIFAR10_CLASSES,
    DEMO_SEED,
    DEMO_TEST_FRACTION,
    IMAGE_SUFFIXES,
    Dataset,
    Normalization,
    check_labels,
    check_matches,
    check_sample_shape,
    stratified_split,
)
from evonnx.data.formats import (
    load_builtin,
    load_cifar10,
    load_dataset,
    load_image_folder,
    load_mnist_idx,
    load_npz,
    read_idx,
)

__all__ = [
    "BUILTIN_NAMES",
    "CIFAR10_CLASSES",
    "DEMO_SEED",
    "DEMO_TEST_FRACTION",
    "IMAGE_SUFFIXES",
    "Dataset",
    "Normalization",
    "check_labels",
    "check_matches",
    "check_sample_shape",
    "load_builtin",
    "load_cifar10",
    "load_dataset",
    "load_image_folder",
    "load_mnist_idx",
    "load_npz",
    "read_idx",
    "stratified_split",
]
