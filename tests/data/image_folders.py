"""Image folders (class subfolders of PNG files) written from the synthetic generator, and a
randomly initialised small timm ViT saved as a weights file: "your images" and "your model"."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from captum_vit.data.synthetic import CLASS_NAMES, generate


def model_options(weights: Path, img_size: int = 64) -> list[str]:
    """The ``--model`` options of :func:`write_random_vit`'s model (timm's 6-block, 64-wide test ViT)."""
    return ["--model", "timm:test_vit", "--weights", str(weights), "--num-classes", "5", "--img-size", str(img_size)]


def class_folder(label: int) -> str:
    """Subfolder names sort in label order, as ``ImageFolder`` numbers them."""
    return f"{label}_{CLASS_NAMES[label].replace(' ', '_')}"


def write_image_folder(root: Path, n: int, seed: int = 0, size: int = 64) -> list[Path]:
    """``n`` synthetic images as ``root/<label>_<class>/<i>.png``; the files in dataset order
    (sorted by class, then name)."""
    batch = generate(n, seed=seed, image_size=size)
    files = []
    for i, (image, label) in enumerate(zip(batch.images, batch.labels, strict=True)):
        path = root / class_folder(int(label)) / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(path)
        files.append(path)
    return sorted(files)


def write_random_vit(path: Path, img_size: int = 64, seed: int = 0) -> torch.nn.Module:
    """timm's ``test_vit`` with 5 classes, its weights drawn from N(0, 0.2) (timm starts the head
    at zero, which would predict one class for every image), saved to ``path``."""
    torch.manual_seed(seed)
    model = timm.create_model("test_vit", pretrained=False, num_classes=5, img_size=img_size)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.2)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(path))
    return model.eval()
