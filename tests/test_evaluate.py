"""``captum_vit.evaluate``: values against direct metric calls, the CLI, 2-process sharding."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import captum_vit.evaluate as ev
import captum_vit.evaluate_cli as ev_cli
from captum_vit.attr import AttentionRollout, GenericAttention
from captum_vit.cli import main
from captum_vit.data.synthetic import SyntheticDataset, generate
from captum_vit.metrics import positive_perturbation_auc, segmentation_scores, segmentation_stats
from captum_vit.testing import make_cnn, make_vit

GROUPS = ("perturbation", "segmentation", "class_sensitivity")


def _tiny_vit() -> torch.nn.Module:
    model = make_vit("cls")
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, 32, 32)}
    return model


def test_evaluate_matches_direct_metric_calls() -> None:
    model = _tiny_vit()
    data, pairs = SyntheticDataset(5, seed=7, image_size=32), SyntheticDataset(2, seed=8, objects=2, image_size=32)
    result = ev.evaluate(model, ["gae", "rollout"], data, pairs, batch_size=2, groups=GROUPS, progress=False)
    assert result is not None
    summary = result.summary()
    batch = generate(5, seed=7, image_size=32)
    x = (batch.images - 0.5) / 0.5
    predicted = model(x).argmax(1)
    attr = GenericAttention(model).attribute(x, target=predicted)
    expected_pos = positive_perturbation_auc(model, batch.images, attr, batch.labels).mean()
    assert summary["gae"]["pos_auc"]["mean"] == pytest.approx(float(expected_pos), abs=1e-4)
    assert summary["gae"]["pos_auc"]["count"] == 5
    seg = segmentation_scores(segmentation_stats(attr, batch.masks))
    assert summary["gae"]["miou"]["mean"] == pytest.approx(seg["miou"])
    # Rollout is class-agnostic: the same map for both objects, so the two shares sum to 100.
    assert summary["rollout"]["class_sensitivity"] == {"mean": pytest.approx(50.0), "count": 2}
    assert set(summary["gae"]) == {"pos_auc", "neg_auc", "deletion_auc", "insertion_auc", "pixel_accuracy",
                                   "miou", "map", "mf1", "class_sensitivity"}  # fmt: skip
    assert AttentionRollout  # imported for the reader: the method behind "rollout"


def test_cli_json_csv_markdown_and_plot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(ev_cli, "model_from_args", lambda args: _tiny_vit())
    args = ["evaluate", "--model", "tiny", "--methods", "rollout", "--num-images", "3", "--pairs", "0", "--no-progress",
            "--metrics", "perturbation,rise"]  # fmt: skip
    assert main([*args, "--format", "json", "--plot", str(tmp_path / "curves.png")]) == 0
    captured = capsys.readouterr()
    assert captured.err.strip() == f"wrote {tmp_path / 'curves.png'} (perturbation curves)"
    out = json.loads(captured.out)
    assert set(out) == {"rollout"} and out["rollout"]["rise_insertion"]["count"] == 3
    assert set(out["rollout"]["pos_auc"]) == {"mean", "count"}
    assert (tmp_path / "curves.png").stat().st_size > 1000
    assert main([*args, "--format", "csv", "--out", str(tmp_path / "t.csv")]) == 0
    assert (tmp_path / "t.csv").read_text().splitlines()[0] == "method,metric,mean,count"
    assert capsys.readouterr().err.strip() == f"wrote {tmp_path / 't.csv'} (csv table)"
    assert main([*args, "--format", "markdown"]) == 0
    assert capsys.readouterr().out.startswith("| method | pos_auc ↓ | neg_auc ↑ |")


def test_bad_input_errors(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    assert main(["evaluate", "--model", "no-such-model", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("captum-vit evaluate: error: ") and err.count("\n") == 1
    assert "'no-such-model' is not a registered classifier" in err
    with pytest.raises(ValueError, match="empty dataset"):
        ev.evaluate(_tiny_vit(), ["rollout"], [], progress=False)
    with pytest.raises(ValueError, match="does not support cnn"):
        ev.evaluate(make_cnn(), ["rollout"], SyntheticDataset(1, image_size=32), progress=False)
    with pytest.raises(ValueError, match="unknown method"):
        ev.evaluate(_tiny_vit(), ["nope"], SyntheticDataset(1, image_size=32), progress=False)
    with pytest.raises(ValueError, match="metric groups"):
        ev.evaluate(_tiny_vit(), ["rollout"], SyntheticDataset(1, image_size=32), groups=("speed",), progress=False)
    monkeypatch.setattr(ev_cli, "model_from_args", lambda args: _tiny_vit())
    assert main(["evaluate", "--dataset", "voc", "--no-progress"]) == 2
    assert capsys.readouterr().err == "captum-vit evaluate: error: --data-root is required for --dataset voc\n"


def _run_rank(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    data, pairs = SyntheticDataset(5, seed=7, image_size=32), SyntheticDataset(3, seed=8, objects=2, image_size=32)
    result = ev.evaluate(_tiny_vit(), ["gae", "rollout"], data, pairs, batch_size=2, groups=GROUPS, progress=False)
    if rank == 0:
        assert result is not None
        Path(out).write_text(json.dumps({"summary": result.summary(), "markdown": result.to_markdown()}))
    else:
        assert result is None


def test_two_processes_give_the_single_process_table(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "rank0.json"
    mp.spawn(_run_rank, args=(2, port, str(out)), nprocs=2, join=True)
    sharded = json.loads(out.read_text())
    data, pairs = SyntheticDataset(5, seed=7, image_size=32), SyntheticDataset(3, seed=8, objects=2, image_size=32)
    single = ev.evaluate(_tiny_vit(), ["gae", "rollout"], data, pairs, batch_size=4, groups=GROUPS, progress=False)
    assert single is not None
    assert sharded["markdown"] == single.to_markdown()
    for method, table in single.summary().items():
        for metric, v in table.items():
            assert sharded["summary"][method][metric]["count"] == v["count"]
            assert sharded["summary"][method][metric]["mean"] == pytest.approx(v["mean"], abs=1e-5)


def test_oracle_reference_maps() -> None:
    data, pairs = SyntheticDataset(3, seed=9, image_size=32), SyntheticDataset(2, seed=10, objects=2, image_size=32)
    groups = ("segmentation", "class_sensitivity")
    result = ev.evaluate(_tiny_vit(), list(ev.ORACLES), data, pairs, groups=groups, progress=False)
    assert result is not None
    s = result.summary()
    for metric in ("pixel_accuracy", "miou", "map", "mf1"):
        assert s["oracle:gt"][metric]["mean"] == pytest.approx(100.0)
    assert s["oracle:inverse"]["pixel_accuracy"]["mean"] == 0.0
    assert s["oracle:gt"]["class_sensitivity"]["mean"] == pytest.approx(100.0)
    assert s["oracle:inverse"]["class_sensitivity"]["mean"] == 0.0  # all its mass on the other object
    assert 20.0 < s["oracle:random"]["class_sensitivity"]["mean"] < 80.0


def test_cli_on_a_voc_folder_scores_segmentation_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from tests.data.fake_datasets import write_voc as _write_voc

    _write_voc(tmp_path / "VOC2012")
    monkeypatch.setattr(ev_cli, "model_from_args", lambda args: _tiny_vit())
    argv = ["evaluate", "--dataset", "voc", "--data-root", str(tmp_path / "VOC2012"), "--methods", "oracle:gt",
            "--format", "json", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)["oracle:gt"]
    # No ImageNet label: only the segmentation metrics; the GT oracle is perfect on labelled pixels.
    assert set(out) == {"pixel_accuracy", "miou", "map", "mf1"}
    assert out["pixel_accuracy"] == {"mean": 100.0, "count": 1}
