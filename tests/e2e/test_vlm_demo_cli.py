"""`polm vlm-demo --smoke` end to end on a tiny Llama + tiny conv tower, with synthetic IDX files in place of
Fashion-MNIST: every phase runs, the splits are disjoint, each image goes through the tower once, and the
results file and images are written."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from polm.cli import main
from polm.vlm.images import image_hash


def write_idx(folder: Path, prefix: str, n: int, seed: int) -> None:
    """IDX gz files as Fashion-MNIST ships them: class c is a bright band at rows 2c..2c+7, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.uint8) % 10
    images = rng.integers(0, 40, size=(n, 28, 28)).astype(np.uint8)
    for img, c in zip(images, labels):
        img[2 * c:2 * c + 8] = 200 + rng.integers(0, 50)
    with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as fh:
        fh.write(bytes(16) + images.tobytes())
    with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as fh:
        fh.write(bytes(8) + labels.tobytes())


@pytest.fixture()
def demo_config(tmp_path, tiny_model_dir) -> Path:
    fashion = tmp_path / "fashion"
    fashion.mkdir()
    write_idx(fashion, "train", 48, seed=1)
    write_idx(fashion, "t10k", 16, seed=2)
    rng = np.random.default_rng(3)
    stage1 = tmp_path / "stage1.jsonl"
    stage1.write_text("".join(json.dumps({"image": rng.integers(0, 255, (16, 16)).tolist(), "prompt": "Describe the image.",
                                          "completion": f"a square number {i % 3}", "label": str(i % 3)}) + "\n"
                              for i in range(20)))
    cfg = yaml.safe_load(Path("configs/vlm_demo.yaml").read_text())
    cfg.update(output_dir=str(tmp_path / "demo"), fashion_dir=str(fashion), stage1_source=str(stage1),
               eval_max_length=200)
    cfg["stage1"]["model"] = {"lm": {"name": str(tiny_model_dir)},
                              "tower": {"name": "tiny-conv", "options": {"image_size": 16, "patch": 4}},
                              "projector": {"name": "mlp2x_gelu"}}
    for stage in ("stage1", "stage2"):
        cfg[stage]["train"].update(progress=False, tensorboard=False)
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_smoke_runs_every_phase_and_writes_one_results_file(demo_config, tmp_path, capsys):
    out = tmp_path / "demo-smoke"
    assert main(["vlm-demo", str(demo_config), "--smoke"]) == 0
    result = json.loads((out / "vlm_fashion_mnist.json").read_text())
    assert list(result["wall_s"]) == ["data", "mlp", "features", "stage1_train", "stage1_eval", "stage2_train",
                                      "stage2_eval", "total"]
    cls = result["classification"]
    assert {cls[row][m]["n"] for row in ("zero_shot", "few_shot", "fine_tuned") for m in ("exact_match", "loglik")} == {8}
    assert cls["fine_tuned_dev"]["loglik"]["n"] == 6
    assert {result["captioning"][row]["n"] for row in ("zero_shot", "few_shot", "fine_tuned")} == {6}
    assert result["mlp_on_pixels"]["test"]["n"] == 8 and result["mlp_on_pixels"]["train_images"] == 16
    assert set(result["paired"]) == {f"{m}: {d}" for m in ("exact_match", "loglik")
                                     for d in ("few_shot - zero_shot", "fine_tuned - zero_shot", "fine_tuned - mlp")} | {
        "cider_d: few_shot - zero_shot", "cider_d: fine_tuned - zero_shot"}
    assert result["stage1_saw"]["records"] == 16 and result["stage1_saw"]["fashion_mnist_images"] == 0
    assert result["stage1"]["steps"] == result["stage2"]["steps"] == 2

    # the splits: train slices and test images are disjoint, the test set is the one every row scored
    data = out / "data"
    hashes = {name: {image_hash(np.asarray(r["image"], np.uint8)) for r in rows(data / f"{name}.jsonl")}
              for name in ("stage2", "dev", "exemplars", "test")}
    for a in hashes:
        for b in hashes:
            assert a == b or not hashes[a] & hashes[b], (a, b)
    few = json.loads((out / "eval" / "stage1" / "test" / "eval" / "vlm_loglik_1shot.json").read_text())
    assert all(len(item["exemplars"]) == 1 and "exemplars.jsonl" in item["exemplars"][0] for item in few["items"])

    captions = json.loads((out / "eval" / "stage2" / "caption" / "eval" / "vlm_caption_0shot.json").read_text())
    derived = [r["completion"] for r in rows(data / "caption_test.jsonl")]
    assert [item["references"] for item in captions["items"]] == [[c] for c in derived]
    assert all(re.fullmatch(r"a (small|large) (dark|grey|light) [a-z -]+", c) for c in derived), derived

    # each Fashion-MNIST image through the tower once: the features phase, then only cache reads
    assert result["features"]["computed"] == result["features"]["fashion_mnist_images"] == sum(map(len, hashes.values()))
    assert result["eval_features_computed"] == {"stage1": 0, "stage2": 0}
    assert result["stage2"]["lineage_data"]["features_computed"] == 0

    images = [Path(p) for p in result["images"]]
    assert {p.name for p in images} >= {"vlm_stage1_loss.png", "vlm_stage2_loss.png",
                                        "vlm_stage2_confusion_loglik_0shot.png", "vlm_stage1_confusion_loglik_1shot.png"}
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in images)
    assert "fine-tuned" in capsys.readouterr().out


def test_stage1_source_with_the_test_question_is_refused(demo_config, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"image": [[0, 255], [255, 0]], "prompt": "What item of clothing is this?",
                               "completion": "Bag"}) + "\n")
    assert main(["vlm-demo", str(demo_config), f"stage1_source={bad}", "--smoke"]) == 2
    assert "stage 1's source asks the test question" in capsys.readouterr().err
