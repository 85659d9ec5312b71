"""One served explainer: its onnxruntime session, its preprocessing and its answer."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from captum_vit.export.runtime import FastExplainer
from captum_vit.export.serving.images import decode_image

#: Graph output holding class logits in a predict-and-explain graph.
LOGITS_OUTPUT = "logits"


class ServedModel:
    """An exported explainer loaded for serving.

    The session is :class:`captum_vit.export.FastExplainer`'s (same provider choice and input
    check); a batch runs every graph output, so a predict-and-explain graph
    (:mod:`captum_vit.export.predict_explain`) also yields the logits.

    Parameters
    ----------
    name : str
        The name clients use.
    path : path-like
        The exported ``.onnx`` file.
    intra_op_threads : int
        onnxruntime threads per call (0: onnxruntime's default).

    Raises
    ------
    FileNotFoundError, ValueError
        A missing or foreign ONNX file, or one whose input is not a 3-channel image.
    """

    def __init__(self, name: str, path: str | os.PathLike[str], intra_op_threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        # Idle onnxruntime threads spin by default; here they would take the CPU from the
        # event loop and the decoding threads that feed them.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.name, self.path = name, Path(path)
        self.explainer = FastExplainer(self.path, session_options=options)
        self.metadata = self.explainer.metadata
        if self.metadata.input_size[0] != 3:
            raise ValueError(
                f"{self.path}: the service decodes RGB images; the explainer takes {self.metadata.input_size}"
            )
        self.output_names = [o.name for o in self.explainer.session.get_outputs()]
        self.has_logits = LOGITS_OUTPUT in self.output_names
        labels = self.metadata.extra.get("label_names")
        self.label_names: list[str] | None = [str(v) for v in labels] if isinstance(labels, list) else None

    def run(self, batch: np.ndarray) -> Sequence[np.ndarray]:
        """All graph outputs for a normalised ``(B, C, H, W)`` float32 batch."""
        return self.explainer.session.run(None, {self.explainer.input_name: np.ascontiguousarray(batch)})

    def preprocess(self, data: bytes, max_side: int) -> np.ndarray:
        return decode_image(data, self.metadata, max_side)

    def warm_up(self) -> None:
        """One call on a blank image, so the first request does not pay for lazy allocations."""
        self.run(np.zeros((1, *self.metadata.input_size), np.float32))

    def answer(self, outputs: tuple[np.ndarray, ...]) -> dict[str, Any]:
        """The JSON answer for one image's row of every output."""
        patch_map = outputs[0]
        out: dict[str, Any] = {
            "model": self.name,
            "method": self.metadata.method,
            "grid": list(patch_map.shape),
            "map": patch_map.tolist(),
            "interpolate_mode": self.metadata.interpolate_mode,
            "input_size": list(self.metadata.input_size),
        }
        if self.has_logits:
            logits = outputs[self.output_names.index(LOGITS_OUTPUT)].astype(np.float64)
            probs = np.exp(logits - logits.max())
            probs /= probs.sum()
            k = int(probs.argmax())
            out["class"] = k
            out["probability"] = float(probs[k])
            if self.label_names is not None and k < len(self.label_names):
                out["label"] = self.label_names[k]
        return out

    def describe(self) -> dict[str, Any]:
        m = self.metadata
        return {
            "name": self.name,
            "method": m.method,
            "precision": m.precision,
            "input_size": list(m.input_size),
            "grid": list(m.patch_grid),
            "mean": list(m.mean),
            "std": list(m.std),
            "outputs": self.output_names,
            "providers": self.explainer.providers,
        }
