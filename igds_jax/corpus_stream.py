"""Stream a corpus file as ``(index, id, record)`` without loading it into memory.

``train.record_files.load_records`` returns a list; scoring a large pool needs the same rows,
validated the same way, one at a time. ``index`` is the record's 0-based position among the
valid records, which is what the scoring engine's process split and merge order use.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from train import record_files
from train.records import DEFAULT_FIELDS, AutoId, FieldNames, Record, RecordValidator

logger = logging.getLogger(__name__)

# Bytes hashed at each end of a corpus file for its fingerprint.
FINGERPRINT_BYTES = 1 << 20


def stream_records(
    path: str | Path,
    *,
    fields: FieldNames = DEFAULT_FIELDS,
    format: record_files.Format | None = None,
    max_chars: int | None = 100_000,
    strict: bool = False,
    auto_id: AutoId = "content",
    split: str | None = None,
) -> Iterator[tuple[int, str, Record]]:
    """Yield ``(index, record.id, record)`` for each valid record of ``path`` in file order.

    Arguments and row validation are those of ``train.record_files.load_records``. JSONL, CSV,
    Parquet and saved datasets are read row by row; a ``.json`` array is parsed whole.
    Raises ValueError at the end when no valid row was found.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file {path} not found")
    fmt = format or record_files.infer_format(path)
    validator = RecordValidator(
        str(path), fields=fields, max_chars=max_chars, strict=strict, auto_id=auto_id
    )
    index = -1
    for index, record in enumerate(record_files.iter_records(path, validator, fmt, split)):
        yield index, record.id, record
    report = validator.report
    (logger.warning if report.num_skipped else logger.info)("%s", report.summary())
    if index < 0:
        raise ValueError(f"no valid records in {path}: {report.summary()}")


def corpus_fingerprint(path: str | Path) -> dict[str, Any]:
    """Identify a corpus file cheaply: its size and a SHA-256 of its first and last MiB.

    A resumed run compares fingerprints to refuse a corpus that changed in between. An edit
    that keeps the size and touches neither end is not detected. A directory (a saved
    dataset) is fingerprinted by its files' names and sizes.
    """
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_dir():
        size = 0
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            size += file.stat().st_size
            digest.update(f"{file.relative_to(path)}:{file.stat().st_size}\n".encode())
        return {"name": path.name, "bytes": size, "sha256_ends": digest.hexdigest()}
    size = path.stat().st_size
    with open(path, "rb") as f:
        digest.update(f.read(FINGERPRINT_BYTES))
        if size > FINGERPRINT_BYTES:
            f.seek(max(FINGERPRINT_BYTES, size - FINGERPRINT_BYTES))
            digest.update(f.read())
    return {"name": path.name, "bytes": size, "sha256_ends": digest.hexdigest()}
