"""Loaders: every file type yields the same records; every failure names the file, line and fix."""

from __future__ import annotations

import csv
import json
import sys
import types

import pytest

from polm.data.loaders import load_records, summarize_skips
from polm.errors import PolmError

RECORDS = [
    {"prompt": "What is 12 + 7?", "completion": "19", "id": "a"},
    {"prompt": "Capital of France?", "completion": "Paris, of course.", "id": "b"},
    {"prompt": "Say \"hi\"", "completion": "hi\nthere", "id": "c"},
]
CHATS = [
    {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}], "id": "x"},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello, friend"}], "id": "y"},
]


def write_jsonl(path, records, extra_lines=()):
    lines = [json.dumps(r) for r in records] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def write_csv(path, records):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]))
        writer.writeheader()
        for r in records:
            writer.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()})
    return str(path)


def write_parquet(path, records):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(records), path)
    return str(path)


@pytest.mark.parametrize("records", [RECORDS, CHATS], ids=["prompt_completion", "messages"])
def test_every_file_type_gives_identical_records(tmp_path, records):
    refs = [
        write_jsonl(tmp_path / "d.jsonl", records),
        str(tmp_path / "d.json"),
        str(tmp_path / "w.json"),
        write_csv(tmp_path / "d.csv", records),
        write_parquet(tmp_path / "d.parquet", records),
    ]
    (tmp_path / "d.json").write_text(json.dumps(records))
    (tmp_path / "w.json").write_text(json.dumps({"data": records}))
    for ref in refs:
        loaded = load_records(ref)
        assert loaded.records == records, ref
        assert loaded.source == ref and loaded.skipped == []


def test_jsonl_ignores_blank_lines_and_counts_lines_for_errors(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("\n" + json.dumps(RECORDS[0]) + "\n\n   \n" + json.dumps(RECORDS[1]) + "\n")
    assert load_records(str(path)).records == RECORDS[:2]
    path.write_text(json.dumps(RECORDS[0]) + "\n\n" + '{"prompt": "x", "completion": }\n')
    with pytest.raises(PolmError) as info:
        load_records(str(path))
    assert str(info.value).startswith(f"{path}:3: line is not valid JSON (Expecting value at column 31)")


@pytest.mark.parametrize("bad, expected", [
    ({"prompt": "x"}, "field 'completion' is missing"),
    ({"prompt": "x", "completion": 3}, "field 'completion' must be a string, got a number"),
])
def test_invalid_record_names_file_line_and_field(tmp_path, bad, expected):
    ref = write_jsonl(tmp_path / "train.jsonl", [RECORDS[0], RECORDS[1], bad])
    with pytest.raises(PolmError) as info:
        load_records(ref)
    assert str(info.value).startswith(f"{ref}:3: {expected}")


def test_json_and_parquet_and_csv_name_the_item_row_and_line(tmp_path):
    bad = [RECORDS[0], {"prompt": "x", "completion": ""}]
    (tmp_path / "d.json").write_text(json.dumps(bad))
    cases = {str(tmp_path / "d.json"): "[item 1]", write_parquet(tmp_path / "d.parquet", bad): "[row 1]"}
    # the first record's completion spans two lines, so the bad record starts on line 4 of the CSV
    cases[write_csv(tmp_path / "d.csv", [RECORDS[2], bad[1]])] = ":4"
    for ref, where in cases.items():
        with pytest.raises(PolmError, match=r"'completion' is empty") as info:
            load_records(ref)
        assert str(info.value).startswith(ref + where + ": "), str(info.value)


def test_skip_invalid_counts_and_summarizes(tmp_path):
    ref = write_jsonl(tmp_path / "train.jsonl", [RECORDS[0], {"text": ""}, RECORDS[1]],
                      extra_lines=["{broken", json.dumps({"foo": 1}), json.dumps(RECORDS[2])])
    loaded = load_records(ref, skip_invalid=True)
    assert loaded.records == RECORDS
    assert [where for where, _ in loaded.skipped] == [f"{ref}:2", f"{ref}:4", f"{ref}:5"]
    assert "not valid JSON" in loaded.skipped[1][1]
    summary = summarize_skips(loaded, show=2)
    assert summary.startswith(f"Skipped 3 of 6 records from '{ref}' ({ref}:2: field 'text' is empty;")
    assert summary.endswith("; and 1 more)")
    assert summarize_skips(load_records(write_jsonl(tmp_path / "ok.jsonl", RECORDS))) == ""


def test_everything_skipped_is_an_error_that_lists_why(tmp_path):
    ref = write_jsonl(tmp_path / "train.jsonl", [{"text": ""}, {"text": 3}])
    with pytest.raises(PolmError, match=r"no valid record in .*Skipped 2 of 2 records"):
        load_records(ref, skip_invalid=True)


def test_allowed_formats_are_enforced(tmp_path):
    ref = write_jsonl(tmp_path / "train.jsonl", [{"text": "plain text"}])
    with pytest.raises(PolmError, match=r":1: format 'text' is not accepted here\. This recipe reads messages"):
        load_records(ref, allowed={"messages"})


@pytest.mark.parametrize("name, content", [("empty.jsonl", ""), ("blank.jsonl", "\n \n"), ("empty.json", "[]"),
                                           ("empty.csv", "prompt,completion\n")])
def test_empty_sources_are_errors(tmp_path, name, content):
    (tmp_path / name).write_text(content)
    with pytest.raises(PolmError, match=r"data source '.*' is empty"):
        load_records(str(tmp_path / name))


def test_missing_file_unknown_extension_and_bad_json_shape(tmp_path):
    with pytest.raises(PolmError, match=r"data file '.*nope\.jsonl' does not exist"):
        load_records(str(tmp_path / "nope.jsonl"))
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(PolmError, match=r"unknown file type '\.txt'\. Supported: \.jsonl, \.json, \.csv, \.parquet"):
        load_records(str(tmp_path / "d.txt"))
    (tmp_path / "d.json").write_text('{"rows": []}')
    with pytest.raises(PolmError, match=r"must hold a list of records"):
        load_records(str(tmp_path / "d.json"))
    (tmp_path / "e.json").write_text('[\n{"text": "a"},\n{"text": }\n]')
    with pytest.raises(PolmError, match=r"e\.json:3: file is not valid JSON"):
        load_records(str(tmp_path / "e.json"))


def test_csv_row_with_too_many_cells(tmp_path):
    (tmp_path / "d.csv").write_text("prompt,completion\na,b\nc,d,e\n")
    with pytest.raises(PolmError, match=r"d\.csv:3: row has more cells than the header's 2 columns"):
        load_records(str(tmp_path / "d.csv"))


def test_parquet_without_pyarrow_names_the_package(tmp_path, monkeypatch):
    ref = write_parquet(tmp_path / "d.parquet", RECORDS)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # makes `import pyarrow.parquet` fail
    with pytest.raises(PolmError, match=r"needs the package 'pyarrow'.*pip install pyarrow"):
        load_records(ref)


def test_hub_reference_offline_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PolmError) as info:
        load_records("hf:polm-nobody/no-such-dataset:test")
    message = str(info.value)
    assert message.startswith("cannot load hub dataset 'polm-nobody/no-such-dataset' split 'test' (")
    assert "\n" not in message and "save the data as a local .jsonl file" in message


def test_builtin_references_are_delegated_and_validated(monkeypatch):
    calls = []

    def load_builtin(ref):
        calls.append(ref)
        return [{"text": "one"}, {"text": ""}, {"prompt": "q", "completion": "a"}]

    monkeypatch.setitem(sys.modules, "polm.data.builtin", types.SimpleNamespace(load_builtin=load_builtin))
    loaded = load_records("builtin:demo?n=3", skip_invalid=True)
    assert calls == ["builtin:demo?n=3"]
    assert loaded.records == [{"text": "one"}, {"prompt": "q", "completion": "a"}]
    assert loaded.skipped == [("builtin:demo?n=3[item 1]", "field 'text' is empty")]
