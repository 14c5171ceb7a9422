"""Load (prompt, response) records from local files: JSON, JSONL, CSV, Parquet, HF datasets.

``load_records`` picks the reader from the path:

- ``.jsonl`` / ``.ndjson``: one JSON object per line; blank lines are ignored.
- ``.json``: one JSON array of objects. A file that is not valid JSON as a whole cannot be
  split into rows, so it raises even with ``strict=False``.
- ``.csv``: a header row, then one record per row (quoted fields may span lines).
- ``.parquet``: one record per table row.
- a directory: a dataset saved with ``datasets.Dataset.save_to_disk`` (a ``DatasetDict``
  needs ``split``).
- ``format="hf"`` on a file: ``datasets.load_dataset`` with ``data_files=path`` and the
  packaged builder for the file's type (json, csv or parquet). Nothing is fetched from the hub.

Text files may be compressed (``.gz`` or ``.zst`` after the type suffix). Bytes that are not
valid UTF-8 affect only the rows that contain them; those rows are skipped as
``invalid_utf8``. Row validation and the id rule are described in ``train.records``.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Literal

from train.records import (
    DEFAULT_FIELDS,
    AutoId,
    BadReason,
    FieldNames,
    LoadReport,
    Record,
    RecordValidator,
)

logger = logging.getLogger(__name__)

Format = Literal["json", "jsonl", "csv", "parquet", "hf"]
_SUFFIX_FORMATS = {
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
}
_COMPRESSED = (".gz", ".zst")


def sha256_file(path: Path) -> str:
    """Return the hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def data_sha256(path: str | Path) -> str:
    """Return the SHA-256 of a data file, or for a saved-dataset directory the SHA-256 of
    each file's relative path and checksum, sorted by path."""
    path = Path(path)
    if not path.is_dir():
        return sha256_file(path)
    listing = "".join(
        f"{file.relative_to(path)}\0{sha256_file(file)}\n"
        for file in sorted(p for p in path.rglob("*") if p.is_file())
    )
    return hashlib.sha256(listing.encode()).hexdigest()


def infer_format(path: Path) -> Format:
    """Return the reader for ``path`` from its suffixes, or "hf" for a directory."""
    if path.is_dir():
        return "hf"
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSED:
        suffixes = suffixes[:-1]
    if suffixes and suffixes[-1] in _SUFFIX_FORMATS:
        return _SUFFIX_FORMATS[suffixes[-1]]  # type: ignore[return-value]
    raise ValueError(
        f"cannot tell the format of {path}: expected a suffix in {sorted(_SUFFIX_FORMATS)} "
        f"(optionally followed by .gz or .zst) or a saved datasets directory; pass format="
    )


def _open_binary(path: Path) -> IO[bytes]:
    suffix = path.suffix.lower()
    if suffix == ".gz":
        return gzip.open(path, "rb")
    if suffix == ".zst":
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb")))
    return open(path, "rb")


def _read_jsonl(path: Path, validator: RecordValidator) -> Iterator[Record]:
    index = 0
    with _open_binary(path) as fh:
        for line_no, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            text = raw.decode("utf-8", errors="surrogateescape")
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                validator.report.num_rows += 1
                validator.reject(index, line_no, BadReason.INVALID_JSON, f"invalid JSON: {e}")
                index += 1
                continue
            record = validator.add_row(row, index, line_no)
            index += 1
            if record is not None:
                yield record


def _read_json(path: Path, validator: RecordValidator) -> Iterator[Record]:
    with _open_binary(path) as fh:
        text = fh.read().decode("utf-8", errors="surrogateescape")
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno}); a .json file must "
            "be one valid JSON array. Fix the file, or write one object per line as .jsonl so "
            "bad lines can be skipped"
        ) from e
    if not isinstance(rows, list):
        raise ValueError(
            f"{path}: top-level JSON value is a {type(rows).__name__}, expected an array of records"
        )
    for index, row in enumerate(rows):
        record = validator.add_row(row, index)
        if record is not None:
            yield record


def _require_columns(path: Path, columns: list[str], fields: FieldNames) -> None:
    missing = [name for name in (fields.prompt, fields.response) if name not in columns]
    if missing:
        raise ValueError(
            f"{path}: column(s) {missing} not found; available columns are {columns}. "
            "Pass fields=FieldNames(prompt=..., response=...) with the right names"
        )


def _read_csv(path: Path, validator: RecordValidator) -> Iterator[Record]:
    with _open_binary(path) as fh:
        text_fh = io.TextIOWrapper(fh, encoding="utf-8", errors="surrogateescape", newline="")
        reader = csv.DictReader(text_fh)
        columns = list(reader.fieldnames or [])
        _require_columns(path, columns, validator.fields)
        index = 0
        previous_end = reader.line_num
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                raise ValueError(
                    f"{path}:{reader.line_num}: CSV parsing failed ({e}); fix the file"
                ) from e
            line_no = previous_end + 1
            previous_end = reader.line_num
            if None in row:
                validator.report.num_rows += 1
                validator.reject(
                    index,
                    line_no,
                    BadReason.INVALID_CSV,
                    f"row has {len(columns) + len(row[None])} fields, header has {len(columns)}",
                )
            else:
                record = validator.add_row(row, index, line_no)
                if record is not None:
                    yield record
            index += 1


def _read_parquet(path: Path, validator: RecordValidator) -> Iterator[Record]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    _require_columns(path, parquet.schema_arrow.names, validator.fields)
    index = 0
    for batch in parquet.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            record = validator.add_row(row, index)
            index += 1
            if record is not None:
                yield record


def _load_hf(path: Path, split: str | None) -> Any:
    import datasets

    if path.is_dir():
        loaded = datasets.load_from_disk(str(path))
    else:
        builder = infer_format(path)
        if builder == "jsonl":
            builder = "json"
        loaded = datasets.load_dataset(builder, data_files=str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if split is None:
            if len(loaded) != 1:
                raise ValueError(
                    f"{path} contains splits {list(loaded)}; pass split= to choose one"
                )
            split = next(iter(loaded))
        if split not in loaded:
            raise ValueError(f"{path} has no split {split!r}; available: {list(loaded)}")
        loaded = loaded[split]
    return loaded


def _read_hf(path: Path, validator: RecordValidator, split: str | None) -> Iterator[Record]:
    dataset = _load_hf(path, split)
    _require_columns(path, list(dataset.column_names), validator.fields)
    index = 0
    for batch in dataset.iter(batch_size=4096):
        columns = list(batch)
        for values in zip(*(batch[c] for c in columns), strict=True):
            record = validator.add_row(dict(zip(columns, values, strict=True)), index)
            index += 1
            if record is not None:
                yield record


def iter_records(
    path: Path, validator: RecordValidator, fmt: Format, split: str | None = None
) -> Iterator[Record]:
    """Yield the valid records of ``path`` in file order, read lazily with ``fmt``.

    JSONL, CSV, Parquet and saved datasets are read row by row; a ``.json`` array is
    parsed whole. Skipped rows are counted in ``validator.report``.
    """
    readers = {
        "jsonl": lambda: _read_jsonl(path, validator),
        "json": lambda: _read_json(path, validator),
        "csv": lambda: _read_csv(path, validator),
        "parquet": lambda: _read_parquet(path, validator),
        "hf": lambda: _read_hf(path, validator, split),
    }
    if fmt not in readers:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(readers)}")
    return readers[fmt]()


def load_records(
    path: str | Path,
    *,
    fields: FieldNames = DEFAULT_FIELDS,
    format: Format | None = None,
    max_chars: int | None = 100_000,
    strict: bool = False,
    auto_id: AutoId = "content",
    split: str | None = None,
    max_examples_per_reason: int = 5,
) -> tuple[list[Record], LoadReport]:
    """Load and validate records from one local file or saved dataset.

    Args:
      path: the file or ``save_to_disk`` directory.
      fields: input field names for the prompt, the response and the id.
      format: reader to use; inferred from the suffix when None.
      max_chars: rows whose prompt or response has more characters are skipped
        (``too_long``); None disables the check. Token-level truncation happens later, in
        ``train.tokenize``.
      strict: raise ``RecordError`` (naming the file, line or record index, and reason) on
        the first bad row instead of skipping it.
      auto_id: how ids are generated for rows without one (see ``train.records``).
      split: split of a ``DatasetDict`` (format "hf" only).
      max_examples_per_reason: how many skipped rows per reason the report keeps and logs.

    Returns:
      The valid records in file order and a ``LoadReport`` of counts per skip reason.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: the file cannot be split into rows, a required column is absent, or no
        valid row remains.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file {path} not found")
    fmt = format or infer_format(path)
    validator = RecordValidator(
        str(path),
        fields=fields,
        max_chars=max_chars,
        strict=strict,
        auto_id=auto_id,
        max_examples_per_reason=max_examples_per_reason,
    )
    rows = iter_records(path, validator, fmt, split)
    records = list(rows)

    report = validator.report
    if report.num_skipped:
        logger.warning("%s", report.summary())
    else:
        logger.info("%s", report.summary())
    if not records:
        raise ValueError(f"no valid records in {path}: {report.summary()}")
    return records, report
