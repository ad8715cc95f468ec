"""Reading local data files into rows: JSON (a list, or ``{"data": [...]}``, or JSON Lines under a
.json name), JSON Lines (``.jsonl`` / ``.ndjson``), Parquet, and gzipped JSON / JSON Lines
(``.json.gz``, ``.jsonl.gz``, ``.ndjson.gz``). Each row keeps where it came from (line, row
number) for error messages. File-level problems raise ``DataError`` naming the file, the line
and column, and the fix.
"""
from __future__ import annotations

import bisect
import gzip
import json
import re
import zlib
from pathlib import Path
from typing import Optional

from harness.errors import DataError

from .formats import Record

FILE_SUFFIXES = (".json", ".jsonl", ".ndjson", ".parquet")
ACCEPTED = FILE_SUFFIXES + (".json.gz", ".jsonl.gz", ".ndjson.gz")

_WS = re.compile(r"[ \t\n\r]*")


def _decode(path: Path, data: bytes) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(
            f"{path}: line {line}, column {col} (byte offset {e.start}): invalid UTF-8 "
            f"(byte 0x{data[e.start]:02x}: {e.reason}); re-encode the file as UTF-8, "
            f"e.g. `iconv -f latin1 -t utf-8 IN > OUT`") from None
    return text[1:] if text.startswith("\ufeff") else text


def _json_error(path: Path, e: json.JSONDecodeError, what: str = "invalid JSON") -> DataError:
    return DataError(f"{path}: line {e.lineno}, column {e.colno}: {what}: {e.msg}; fix the JSON syntax there")


def _read_json_array(path: Path, text: str, start: int) -> list[Record]:
    """Scan a top-level JSON list element by element, so each row knows its line."""
    newlines = [m.start() for m in re.finditer("\n", text)]

    def line_of(pos: int) -> int:
        return bisect.bisect_left(newlines, pos) + 1

    decoder = json.JSONDecoder()
    records: list[Record] = []
    i = _WS.match(text, start + 1).end()
    if i < len(text) and text[i] == "]":
        i = _WS.match(text, i + 1).end()
    else:
        while True:
            try:
                obj, end = decoder.raw_decode(text, i)
            except json.JSONDecodeError as e:
                raise _json_error(path, e) from None
            n = len(records) + 1
            line = line_of(i)
            records.append(Record(f"row {n} (line {line})", n, obj, {"line": line}))
            i = _WS.match(text, end).end()
            if i < len(text) and text[i] == ",":
                i = _WS.match(text, i + 1).end()
                continue
            if i < len(text) and text[i] == "]":
                i = _WS.match(text, i + 1).end()
                break
            e = json.JSONDecodeError("expected ',' or ']' after a row", text, min(i, len(text)))
            raise _json_error(path, e) from None
    if i < len(text):
        raise _json_error(path, json.JSONDecodeError("extra data after the list", text, i))
    return records


def _read_jsonl(path: Path, text: str) -> list[Record]:
    records = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue  # blank lines (and a final newline) are not rows
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {lineno}, column {e.colno}: invalid JSON: {e.msg}; "
                            f"each line of a .jsonl file must hold one JSON object") from None
        n = len(records) + 1
        records.append(Record(f"line {lineno}", n, obj, {"line": lineno}))
    return records


def file_kind(path: Path) -> tuple[str, bool]:
    """``(suffix, gzipped)``: ``data.jsonl.gz`` -> ``(".jsonl", True)``. Raises DataError for
    a suffix that is not a data file's."""
    suffixes = [s.lower() for s in path.suffixes]
    gz = bool(suffixes) and suffixes[-1] == ".gz"
    suffix = (suffixes[-2] if len(suffixes) > 1 else "") if gz else (suffixes[-1] if suffixes else "")
    if suffix not in FILE_SUFFIXES or (gz and suffix == ".parquet"):
        shown = "".join(suffixes[-2:] if gz else suffixes[-1:]) or "(none)"
        raise DataError(f"{path}: unsupported file type '{shown}'; use one of {', '.join(ACCEPTED)}"
                        + (" (Parquet files compress inside; do not gzip them)" if gz and suffix == ".parquet" else ""))
    return suffix, gz


def _read_bytes(path: Path, gz: bool) -> bytes:
    if not gz:
        return path.read_bytes()
    try:
        return gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as e:  # not gzip, or cut short
        raise DataError(f"{path}: cannot decompress as gzip ({e}); the file is damaged or not gzipped "
                        f"(rename it without .gz if it is plain text)") from None


def read_rows(path: Path) -> tuple[list[Record], str]:
    """Read a data file into records; returns ``(records, file_format)``. File-level
    problems (unknown suffix, invalid UTF-8, JSON syntax, damaged gzip, no rows) raise
    ``DataError``. ``.json.gz`` / ``.jsonl.gz`` (how HH-RLHF ships) are decompressed first."""
    suffix, gz = file_kind(path)
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow raises several types for a damaged or non-Parquet file
            raise DataError(f"{path}: cannot read as Parquet: {e}") from None
        records = [Record(f"row {i}", i, r) for i, r in enumerate(rows, start=1)]
        file_format = "parquet"
    else:
        text = _decode(path, _read_bytes(path, gz))
        start = _WS.match(text).end()
        if start == len(text):
            raise DataError(f"{path}: the file is empty (0 rows)")
        if suffix == ".json" and text[start] == "[":
            records, file_format = _read_json_array(path, text, start), "json"
        elif suffix == ".json":
            try:
                doc = json.loads(text)
            except json.JSONDecodeError as e:
                if e.msg != "Extra data":
                    raise _json_error(path, e) from None
                doc = None  # several JSON values: JSON Lines under a .json name (common on the hub)
            if doc is None:
                records, file_format = _read_jsonl(path, text), "jsonl"
            elif isinstance(doc, dict) and isinstance(doc.get("data"), list):
                records = [Record(f"data row {i}", i, r) for i, r in enumerate(doc["data"], start=1)]
                file_format = "json"
            else:
                raise DataError(f"{path}: expected a list of rows or {{\"data\": [rows]}} at the top level, "
                                f"got {type(doc).__name__}" + (f" with keys {sorted(doc)[:8]}" if isinstance(doc, dict) else ""))
        else:
            records, file_format = _read_jsonl(path, text), "jsonl"
    if not records:
        raise DataError(f"{path}: no rows (the file holds an empty list or table)")
    return records, file_format + (".gz" if gz else "")


def resolve_path(path: str, base_dir: Optional[Path]) -> Path:
    """``path`` as given if absolute; else relative to ``base_dir`` (the suite file's folder),
    then to the working directory."""
    p = Path(path).expanduser()
    if p.is_absolute():
        candidates = [p]
    else:
        candidates = ([Path(base_dir) / p] if base_dir is not None else []) + [Path.cwd() / p]
    for c in candidates:
        if c.is_file():
            return c
    hint = ""
    if Path(path).name == "dpo_en_demo.json":
        hint = "; scripts/fetch_llamafactory_demo.sh downloads it"
    raise DataError(f"data file '{path}' not found (looked in: {', '.join(str(c) for c in candidates)}){hint}")

