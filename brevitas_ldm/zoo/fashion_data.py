"""The Fashion-MNIST data behind tiny-sd-fashion (a build-time input only).

Fashion-MNIST (60,000 training and 10,000 test 28x28 grey product photos of ten clothing classes, MIT licence) is
harder than the 8x8 digits in every way that matters to a generator: textures, thin straps and heels, and classes
(t-shirt, pullover, coat, shirt) that differ only in details. Debian ships it::

    apt-get install dataset-fashion-mnist        # files under /usr/share/datasets/fashion-mnist

Only the training script reads it; the trained pipeline, the classifier and the FID reference statistics of the
test split ship inside the package, so nothing at run time or in CI needs the data.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from brevitas_ldm.errors import BrevitasLDMError
from brevitas_ldm.zoo.data import ImageSplit

DEFAULT_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")

#: Class names in label order (Fashion-MNIST's labels 0..9).
FASHION_NAMES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                 "ankle boot")

#: Phrasings used at training time; evaluation uses the first one so that prompts are the same for every run.
#: ``{a}`` is the article that fits the name ("a" or "an").
FASHION_TEMPLATES = (
    "a photo of {a} {name}",
    "a product picture of {a} {name}",
    "a grey {name} on black",
    "{name}",
)

IMAGE_SIZE = 32
_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def _article(name: str) -> str:
    return "an" if name[0] in "aeiou" else "a"


def fashion_prompt(label: int, template_index: int = 0) -> str:
    """The prompt that asks for class ``label`` (0..9) in phrasing ``template_index``."""
    name = FASHION_NAMES[label]
    return FASHION_TEMPLATES[template_index].format(a=_article(name), name=name)


def fashion_prompts() -> list[str]:
    """Every training prompt: row ``t * 10 + label`` is template ``t`` for class ``label``."""
    return [fashion_prompt(label, t) for t in range(len(FASHION_TEMPLATES)) for label in range(10)]


def fashion_label_from_prompt(prompt: str) -> int | None:
    """The class a prompt asks for, or None when it names none ("t-shirt" is not read as "shirt")."""
    text = " " + " ".join(re.findall(r"[a-z]+(?:-[a-z]+)*", prompt.lower())) + " "
    # Longest names first, so "t-shirt" wins over "shirt" and "ankle boot" over a bare "boot".
    for label in sorted(range(10), key=lambda i: -len(FASHION_NAMES[i])):
        name = FASHION_NAMES[label]
        if f" {name} " in text or f" {name}s " in text or (name.endswith("s") and f" {name[:-1]} " in text):
            return label
    return None


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    magic = int.from_bytes(data[:4], "big")
    if magic >> 8 != 0x08:
        raise BrevitasLDMError(f"{path} is not an unsigned-byte IDX file (magic {magic:#x}): reinstall "
                               f"dataset-fashion-mnist")
    ndim = magic & 0xFF
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def pad_images(images_28: np.ndarray) -> torch.Tensor:
    """(N, 28, 28) uint8 -> (N, 1, 32, 32) float in [-1, 1], padded with the black background (no resampling)."""
    x = torch.from_numpy(np.asarray(images_28, dtype=np.float32) / 255.0).reshape(-1, 1, 28, 28)
    pad = (IMAGE_SIZE - 28) // 2
    x = F.pad(x, (pad, pad, pad, pad), value=0.0)
    return (x * 2.0 - 1.0).contiguous()


def load_fashion(data_dir: Path = DEFAULT_DATA_DIR) -> ImageSplit:
    """The official split: the 60,000 training images train, the 10,000 test images are held out."""
    data_dir = Path(data_dir)
    missing = [name for pair in _FILES.values() for name in pair if not (data_dir / name).is_file()]
    if missing:
        raise BrevitasLDMError(f"Fashion-MNIST is not in {data_dir} (missing {missing[0]}): run "
                               f"`apt-get install dataset-fashion-mnist` or pass --data <folder with the IDX files>")
    parts = {}
    for split, (images, labels) in _FILES.items():
        parts[split] = (pad_images(_read_idx(data_dir / images)),
                        torch.from_numpy(_read_idx(data_dir / labels).astype(np.int64)))
    return ImageSplit(train_images=parts["train"][0], train_labels=parts["train"][1],
                        heldout_images=parts["test"][0], heldout_labels=parts["test"][1])


def shift_augment(images: torch.Tensor, generator: torch.Generator, max_shift_px: int = 2) -> torch.Tensor:
    """Random integer shifts of up to ``max_shift_px`` pixels, padded with the background: label-preserving
    jitter that keeps pixels exact. No flips: every shoe in Fashion-MNIST points left, so a flipped one would be
    a sample the test split never shows."""
    n = images.shape[0]
    out = images
    if max_shift_px:
        padded = F.pad(out, (max_shift_px,) * 4, value=-1.0)
        dx = torch.randint(0, 2 * max_shift_px + 1, (n,), generator=generator)
        dy = torch.randint(0, 2 * max_shift_px + 1, (n,), generator=generator)
        rows = (dy.view(-1, 1) + torch.arange(IMAGE_SIZE)).view(n, 1, IMAGE_SIZE, 1).expand(n, 1, IMAGE_SIZE,
                                                                                            padded.shape[-1])
        out = padded.gather(2, rows)
        cols = (dx.view(-1, 1) + torch.arange(IMAGE_SIZE)).view(n, 1, 1, IMAGE_SIZE).expand(n, 1, IMAGE_SIZE,
                                                                                            IMAGE_SIZE)
        out = out.gather(3, cols)
    return out.contiguous()
