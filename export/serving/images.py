"""Uploaded bytes -> the explainer's input, and a map -> a PNG heat-map overlay.

Preprocessing is the library's own: the image is converted to RGB, resized straight to the
explainer's input size with bilinear filtering and no crop (as :mod:`captum_vit.data.loaders`
does for every real benchmark, after Chefer et al., LTX and IIA), scaled to ``[0, 1]`` and
normalised with the mean and std stored in the ONNX metadata
(:func:`captum_vit.models.preprocess.normalize`). An image already at the input size is not
resampled, so a lossless PNG of a tensor reproduces that tensor exactly.
"""

from __future__ import annotations

import io

import numpy as np
import torch

from captum_vit.data.loaders import rgb_image, to_image_tensor
from captum_vit.export.onnx_export import ExplainerMetadata
from captum_vit.export.serving.config import ServeError
from captum_vit.models.preprocess import normalize
from captum_vit.models.vit import upsample_patch_map

#: Accepted formats: their leading bytes and PIL's format name.
SIGNATURES = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG"}


def sniff_format(data: bytes) -> str:
    """``"PNG"`` or ``"JPEG"`` from the leading bytes; 415 for anything else."""
    for magic, fmt in SIGNATURES.items():
        if data.startswith(magic):
            return fmt
    raise ServeError(415, "unsupported_format", "the image must be PNG or JPEG bytes")


def decode_image(data: bytes, metadata: ExplainerMetadata, max_side: int) -> np.ndarray:
    """PNG/JPEG bytes -> the normalised ``(C, H, W)`` float32 input of the explainer.

    Raises
    ------
    ServeError
        415 for a format other than PNG/JPEG, 413 for a side above ``max_side`` (checked from
        the header, before the pixels are decoded), 400 for a corrupt or truncated image.

    Examples
    --------
    >>> from PIL import Image
    >>> meta = ExplainerMetadata((3, 2, 2), (1, 1), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "ltx", "")
    >>> buf = io.BytesIO()
    >>> Image.new("RGB", (2, 2), (255, 0, 0)).save(buf, format="PNG")
    >>> decode_image(buf.getvalue(), meta, max_side=64)[:, 0, 0]
    array([ 1., -1., -1.], dtype=float32)
    """
    from PIL import Image, UnidentifiedImageError

    fmt = sniff_format(data)
    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as img:
            if max(img.size) > max_side:
                raise ServeError(
                    413,
                    "image_too_large",
                    f"image is {img.size[0]}x{img.size[1]}; the largest side allowed is {max_side}",
                )
            rgb = np.asarray(rgb_image(img))
    except ServeError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ServeError(400, "corrupt_image", f"cannot decode the {fmt} image: {e}") from None
    c, h, w = metadata.input_size
    pixels = to_image_tensor(rgb, (h, w))
    x = normalize(pixels, torch.tensor(metadata.mean), torch.tensor(metadata.std))
    return x.numpy().astype(np.float32, copy=False)


def heatmap_png(x: np.ndarray, patch_map: np.ndarray, metadata: ExplainerMetadata, alpha: float = 0.5) -> bytes:
    """A PNG of the input image with the map over it, at the explainer's input size.

    The map is upsampled as :class:`captum_vit.export.FastAttribution` upsamples it (the
    metadata's interpolation) and coloured black-red-yellow-white; values are clipped to
    ``[0, 1]``, the range of the keep probabilities pLTX and DiffMask return.
    """
    from PIL import Image

    c, h, w = metadata.input_size
    mean = np.asarray(metadata.mean, np.float32).reshape(-1, 1, 1)
    std = np.asarray(metadata.std, np.float32).reshape(-1, 1, 1)
    pixels = np.clip(x * std + mean, 0.0, 1.0).transpose(1, 2, 0)
    up = upsample_patch_map(torch.from_numpy(patch_map[None]), (1, 1, h, w), metadata.interpolate_mode)
    v = np.clip(up[0, 0].numpy(), 0.0, 1.0)[..., None]
    heat = np.clip(np.concatenate([3 * v, 3 * v - 1, 3 * v - 2], axis=-1), 0.0, 1.0)
    blend = (1 - alpha) * pixels + alpha * heat
    buf = io.BytesIO()
    Image.fromarray(np.round(blend * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()
