"""One model specification: registered names, timm architectures with your weights, Hugging
Face folders; the preprocessing comes from the model."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from captum_vit.data.datasets import pixel_transform
from captum_vit.models.fingerprint import model_fingerprint
from captum_vit.models.preprocess import model_logits, normalize_for
from captum_vit.models.pretrained import build_architecture
from captum_vit.models.spec import ModelSpec, add_model_arguments, model_from_args, read_state_dict
from captum_vit.models.spec_hf import hf_preprocessing
from captum_vit.testing import assert_close, make_cnn


def test_timm_architecture_with_your_safetensors(tmp_path: Path) -> None:
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=5)
    path = tmp_path / "mine.safetensors"
    save_file(model.state_dict(), str(path))
    spec = ModelSpec.parse("timm:vit_tiny_patch16_224", weights=path, num_classes=5, img_size=32)
    loaded = spec.load()
    assert model_fingerprint(loaded) == model_fingerprint(model) and not loaded.training
    assert loaded.pretrained_cfg["input_size"] == (3, 32, 32) and loaded.pretrained_cfg["num_classes"] == 5
    x = torch.rand(2, 3, 32, 32)
    assert_close(loaded(normalize_for(loaded, x)), model.eval()(normalize_for(model, x)), "exact")
    # The architecture rebuilds it untrained (what a registered explainer is loaded into).
    rebuilt = build_architecture(spec.architecture(loaded))
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_pickled_state_dicts_are_read_with_weights_only(tmp_path: Path) -> None:
    model = timm.create_model("resnet10t", num_classes=3)
    state = model.state_dict()
    nested = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}  # a DDP training checkpoint
    torch.save(nested, tmp_path / "ckpt.pth")
    read = read_state_dict(tmp_path / "ckpt.pth")
    assert read.keys() == state.keys() and all(torch.equal(read[k], v) for k, v in state.items())
    loaded = ModelSpec.parse("timm:resnet10t", weights=tmp_path / "ckpt.pth", num_classes=3, img_size=64).load()
    assert model_fingerprint(loaded) == model_fingerprint(model)
    assert loaded.pretrained_cfg["input_size"] == (3, 64, 64)  # a CNN takes any size: only the preprocessing
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "module.pt")  # a pickled module, not a state dict
    with pytest.raises(ValueError, match=r"cannot be read with torch.load\(weights_only=True\)"):
        read_state_dict(tmp_path / "module.pt")


def test_weights_that_do_not_fit_name_the_tensors_and_the_options(tmp_path: Path) -> None:
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=5)
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    spec = ModelSpec.parse("timm:vit_tiny_patch16_224", weights=tmp_path / "w.safetensors")
    with pytest.raises(ValueError) as info:
        spec.load()
    message = str(info.value)
    assert "head.weight (5, 192) in the file, (1000, 192) in the model" in message
    assert "pos_embed (1, 5, 192) in the file, (1, 197, 192) in the model" in message
    assert message.endswith("Check --num-classes and --img-size")


@pytest.mark.parametrize(
    ("text", "options", "error", "message"),
    [
        ("", {}, ValueError, "expected a registered name"),
        ("timm:no_such_net", {"pretrained": True}, ValueError, "unknown timm architecture 'no_such_net'"),
        ("timm:resnet18", {}, ValueError, "needs its weights: --weights FILE"),
        ("timm:resnet18", {"pretrained": True, "weights": "x.pt"}, ValueError, "exclusive"),
        ("timm:resnet18", {"weights": "w.onnx"}, ValueError, "expected a .safetensors, .pth, .pt or .bin file"),
        ("timm:resnet18", {"weights": "/nonexistent/w.pt"}, FileNotFoundError, "no such file"),
        ("timm:resnet18", {"pretrained": True, "img_size": 0}, ValueError, "--img-size: expected a positive"),
        ("synthetic-vit", {"num_classes": 3}, ValueError, "--num-classes applies to timm:<architecture> models"),
        ("no-such-model", {}, ValueError, "'no-such-model' is not a registered classifier"),
        ("synthetic-vit-pltx", {}, ValueError, "is a registered pltx explainer"),
    ],
)
def test_bad_specifications_are_refused_before_loading(
    text: str, options: dict, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        ModelSpec.parse(text, **options)


def test_pretrained_asks_timm_for_hub_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """No download in tests: record what the specification asks timm for."""
    calls: list[tuple[str, dict]] = []
    cnn = make_cnn()

    def create_model(name: str, **kwargs: object) -> torch.nn.Module:
        calls.append((name, kwargs))
        return cnn

    monkeypatch.setattr(timm, "create_model", create_model)
    spec = ModelSpec.parse("timm:resnet10t", pretrained=True, num_classes=5)
    assert spec.describe() == "timm:resnet10t --pretrained --num-classes 5"
    spec.load()
    assert calls == [("resnet10t", {"pretrained": True, "num_classes": 5})]


def test_registered_names_load_the_registry_entry() -> None:
    spec = ModelSpec.parse("synthetic-vit")
    model = spec.load()
    assert spec.describe() == "synthetic-vit" and model.pretrained_cfg["input_size"] == (3, 64, 64)
    assert spec.architecture(model)["kwargs"]["patch_size"] == 8


def test_the_command_line_form_loads_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parser = argparse.ArgumentParser()
    add_model_arguments(parser, default=None, aliases=("--explainee",))
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=5)
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    argv = ["--explainee", "timm:vit_tiny_patch16_224", "--weights", str(tmp_path / "w.safetensors"),
            "--num-classes", "5", "--img-size", "32"]  # fmt: skip
    args = parser.parse_args(argv)
    first = model_from_args(args)
    monkeypatch.setattr(ModelSpec, "load", lambda self: pytest.fail("loaded twice"))
    assert model_from_args(args) is first
    with pytest.raises(SystemExit):
        parser.parse_args([])  # --model is required when there is no default


# ------------------------------------------------------------------------- Hugging Face
HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None


def _tiny_hf_vit(folder: Path, resample: int = 2) -> torch.nn.Module:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32,
        patch_size=8, num_labels=5, id2label={i: f"class {i}" for i in range(5)},
    )  # fmt: skip
    model = ViTForImageClassification(config).eval()
    model.save_pretrained(str(folder))
    processor = ViTImageProcessor(
        size={"height": 32, "width": 32}, image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.25, 0.3], resample=resample
    )
    processor.save_pretrained(str(folder))
    return model


@pytest.mark.skipif(not HAS_TRANSFORMERS, reason="transformers is not installed (the hf extra)")
def test_a_hugging_face_folder_loads_with_its_image_processor(tmp_path: Path) -> None:
    from transformers import ViTImageProcessor

    theirs = _tiny_hf_vit(tmp_path / "hf")
    spec = ModelSpec.parse(str(tmp_path / "hf"))
    assert spec == ModelSpec.parse(f"hf:{tmp_path / 'hf'}") and spec.source == "hf"
    model = spec.load()
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 32, 32) and cfg["mean"] == (0.4, 0.5, 0.6) and cfg["std"] == (0.2, 0.25, 0.3)
    assert cfg["interpolation"] == "bilinear" and cfg["label_names"][4] == "class 4" and cfg["num_classes"] == 5
    # The image processor's output is the reference for our pixels + normalisation.
    rng = torch.Generator().manual_seed(0)
    image = Image.fromarray((torch.rand(45, 60, 3, generator=rng) * 255).byte().numpy())
    expected = ViTImageProcessor.from_pretrained(str(tmp_path / "hf"))(image, return_tensors="pt")["pixel_values"]
    ours = normalize_for(model, pixel_transform(model)(image)[None])
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    grey_levels = ((ours - expected) * std * 255).abs()
    # Both resize with Pillow; on 1 % of the pixels they round to the next grey level.
    assert grey_levels.max() <= 1 + 1e-3 and (grey_levels > 0.5).float().mean() < 0.02
    with torch.no_grad():
        assert_close(model_logits(model(expected)), theirs(pixel_values=expected).logits, "fp32", "logits")
    assert model.model.config.num_labels == 5  # the transformers model itself
    with pytest.raises(ValueError, match="a Hugging Face folder holds its own"):
        ModelSpec.parse(str(tmp_path / "hf"), num_classes=3)


def test_hugging_face_image_processor_configs_without_transformers(tmp_path: Path) -> None:
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 224},
                    "do_center_crop": True, "resample": 3, "image_mean": [0.5] * 3, "image_std": [0.5] * 3})
    )  # fmt: skip
    cfg = hf_preprocessing(tmp_path)
    assert cfg["input_size"] == (3, 224, 224) and cfg["crop_pct"] == 224 / 256 and cfg["crop_mode"] == "center"
    assert cfg["interpolation"] == "bicubic"
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"size": {"longest_edge": 3}}))
    with pytest.raises(ValueError, match="unsupported size"):
        hf_preprocessing(tmp_path)
