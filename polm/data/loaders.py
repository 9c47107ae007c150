"""Load records from a file (.jsonl .json .csv .parquet), an embedded source or the hub, validated.

Every record is checked by `validate_record`; an error names the file and line (JSONL, CSV), the
item (JSON) or row (Parquet), the field and the fix. With `skip_invalid` bad records are counted
and skipped instead.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polm.data.records import validate_record
from polm.errors import PolmError

SUPPORTED = (".jsonl", ".json", ".csv", ".parquet")

# A raw item: (where, record) or (where, PolmError) when the source itself is malformed there.
Item = tuple[str, Any]


@dataclass
class LoadedData:
    records: list[dict]
    source: str
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (where, reason)


def load_records(ref: str, *, skip_invalid: bool = False, allowed: set[str] | None = None,
                 require_targets: bool = True) -> LoadedData:
    """Read and validate every record of `ref`: a file path, `builtin:...` or `hf:org/name[:split]`.

    Raises PolmError for a missing file, an unknown extension, a malformed line or record (unless
    `skip_invalid`), and an empty result. `allowed` and `require_targets` go to `validate_record`.
    """
    loaded = LoadedData(records=[], source=ref)
    for where, item in _items(ref):
        try:
            if isinstance(item, PolmError):
                raise item
            validate_record(item, where, allowed, require_targets=require_targets)
        except PolmError as err:
            if not skip_invalid:
                raise
            loaded.skipped.append((where, err.what))
            continue
        loaded.records.append(item)
    if not loaded.records:
        what = f"no valid record in '{ref}'" if loaded.skipped else f"data source '{ref}' is empty"
        fix = summarize_skips(loaded) if loaded.skipped else "Check that the file holds records."
        raise PolmError(what, fix=fix)
    return loaded


def summarize_skips(loaded: LoadedData, show: int = 3) -> str:
    """One line: how many records were skipped and the first few reasons ('' when none were)."""
    if not loaded.skipped:
        return ""
    total = len(loaded.skipped) + len(loaded.records)
    shown = "; ".join(f"{where}: {reason}" for where, reason in loaded.skipped[:show])
    more = f"; and {len(loaded.skipped) - show} more" if len(loaded.skipped) > show else ""
    return f"Skipped {len(loaded.skipped)} of {total} records from '{loaded.source}' ({shown}{more})"


def read_items(ref: str) -> Iterator[Item]:
    """(where, record) for every raw record of `ref`, unvalidated (record formats other than polm's
    training formats, e.g. QA facts); a malformed line comes as (where, PolmError)."""
    return _items(ref)


def _items(ref: str) -> Iterator[Item]:
    if ref.startswith("builtin:"):
        from polm.data.builtin import load_builtin  # its sources pull optional packages

        return ((f"{ref}[item {i}]", rec) for i, rec in enumerate(load_builtin(ref)))
    if ref.startswith("hf:"):
        return _hub_items(ref)
    path = Path(ref)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED:
        raise PolmError(f"cannot read '{ref}': unknown file type '{suffix or '(none)'}'",
                        fix="Supported: " + ", ".join(SUPPORTED) + ", builtin:NAME and hf:org/name[:split].")
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise PolmError(f"data file '{ref}' {what}", fix="Check the path (relative paths start at the "
                        "current directory).")
    readers = {".jsonl": _jsonl_items, ".json": _json_items, ".csv": _csv_items, ".parquet": _parquet_items}
    return readers[suffix](path, ref)


def _read_text(path: Path, ref: str) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")  # -sig: tolerate a byte-order mark
    except UnicodeDecodeError as err:
        raise PolmError(f"data file '{ref}' is not UTF-8 text (byte {err.start})",
                        fix="Re-save the file as UTF-8.") from None


def _jsonl_items(path: Path, ref: str) -> Iterator[Item]:
    for lineno, line in enumerate(_read_text(path, ref).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{ref}:{lineno}"
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as err:
            yield where, PolmError(f"line is not valid JSON ({err.msg} at column {err.colno})", where=where,
                                   fix="Each line must be one complete JSON object.")


def _json_items(path: Path, ref: str) -> Iterator[Item]:
    try:
        data = json.loads(_read_text(path, ref))
    except json.JSONDecodeError as err:
        raise PolmError(f"file is not valid JSON ({err.msg} at column {err.colno})", where=f"{ref}:{err.lineno}",
                        fix="Fix the JSON; for one object per line use a .jsonl file.") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise PolmError("a .json data file must hold a list of records or {\"data\": [...]}", where=ref,
                        fix="Wrap the records in a list, or write one per line in a .jsonl file.")
    return ((f"{ref}[item {i}]", rec) for i, rec in enumerate(data))


def _csv_items(path: Path, ref: str) -> Iterator[Item]:
    """Rows as dicts of strings; a `messages` cell holds the turns as JSON. where = file:line."""
    reader = csv.DictReader(_read_text(path, ref).splitlines(keepends=True))
    start = 2  # the header is line 1; a quoted cell may span lines, so track the reader's line count
    for row in reader:
        where, start = f"{ref}:{start}", reader.line_num + 1
        if None in row:
            yield where, PolmError(f"row has more cells than the header's {len(reader.fieldnames)} columns",
                                   where=where, fix="Quote cells that contain commas.")
            continue
        yield where, _decode_messages_cell(row, where)


def _decode_messages_cell(row: dict, where: str) -> dict | PolmError:
    if not isinstance(row.get("messages"), str):
        return row
    try:
        row["messages"] = json.loads(row["messages"])
    except json.JSONDecodeError as err:
        return PolmError(f"cell 'messages' is not valid JSON ({err.msg})", where=where,
                         fix="Write the turns as a JSON list in that cell.")
    return row


def _parquet_items(path: Path, ref: str) -> Iterator[Item]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise PolmError(f"reading '{ref}' needs the package 'pyarrow', which is not installed",
                        fix="Install it with: pip install pyarrow") from None
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as err:  # pyarrow raises several error types for a damaged file
        raise PolmError(f"cannot read parquet file ({err})", where=ref, fix="Check that the file is Parquet.") from None
    return ((f"{ref}[row {i}]", rec) for i, rec in enumerate(rows))


def _hub_items(ref: str) -> Iterator[Item]:
    name, _, split = ref[len("hf:"):].partition(":")
    split = split or "train"
    if not name:
        raise PolmError(f"'{ref}' names no dataset", fix="Write hf:org/name or hf:org/name:split.")
    import datasets  # heavy: only for hub references

    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as err:  # offline, unknown name, bad split, auth: all end the same way for the user
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PolmError(f"cannot load hub dataset '{name}' split '{split}' ({reason})",
                        fix="Check the name and split and that you are online (HF_HUB_OFFLINE unset), "
                            "or save the data as a local .jsonl file.") from None
    return ((f"{ref}[row {i}]", rec) for i, rec in enumerate(ds.to_list()))
