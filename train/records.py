"""Task and pool records: (prompt, response) pairs with a stable id, and row validation.

A record has four parts: ``id`` (a string, unique within one loaded file), ``prompt``,
``response`` and ``extra`` (every other field of the input row, kept verbatim so it can be
written back out with the selection).

Ids: when a row has a usable value in the id field (a non-empty string, or an integer,
which is converted with ``str``), that value is the id. When the id field is absent, null or
blank, or ``FieldNames.id`` is None, the id is generated:

- ``auto_id="content"`` (default): the first 16 hex digits of the SHA-256 of the UTF-8 JSON
  array ``[prompt, response]`` (``json.dumps(..., ensure_ascii=False)``). The id depends only
  on the text, so it is the same in every file order and on every host, and exact duplicate
  examples collide and are skipped as ``duplicate_id``.
- ``auto_id="index"``: the record's 0-based position in the file, as a decimal string.

A row is skipped (or, with ``strict=True``, raises :class:`RecordError`) for one of the
reasons in :class:`BadReason`. Checks run in this order and the first failure is the reason:
row not an object, missing field, wrong type, text not valid UTF-8, empty field, text longer
than ``max_chars`` characters, duplicate id. The first row with a given id is kept.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

logger = logging.getLogger(__name__)

AutoId = Literal["content", "index"]


class BadReason(enum.StrEnum):
    """Reason a row was skipped."""

    INVALID_JSON = "invalid_json"
    INVALID_CSV = "invalid_csv"
    INVALID_UTF8 = "invalid_utf8"
    WRONG_TYPE = "wrong_type"
    MISSING_FIELD = "missing_field"
    EMPTY_FIELD = "empty_field"
    TOO_LONG = "too_long"
    DUPLICATE_ID = "duplicate_id"


@dataclass(frozen=True)
class FieldNames:
    """Names of the input fields that hold the prompt, the response and the id."""

    prompt: str = "prompt"
    response: str = "response"
    # None: ignore any id field and always generate ids.
    id: str | None = "id"


DEFAULT_FIELDS = FieldNames()


@dataclass(frozen=True)
class Record:
    """One (prompt, response) example with its id and the row's other fields."""

    id: str
    prompt: str
    response: str
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_row(self, fields: FieldNames = DEFAULT_FIELDS) -> dict[str, Any]:
        """Rebuild the input row under the original field names (id first)."""
        row: dict[str, Any] = {fields.id or "id": self.id}
        row[fields.prompt] = self.prompt
        row[fields.response] = self.response
        row.update(self.extra)
        return row


@dataclass(frozen=True)
class BadRecord:
    """One skipped row: where it was and why it was skipped."""

    source: str
    index: int  # 0-based position of the row in the file
    line: int | None  # 1-based line where the row starts, for JSONL and CSV
    reason: BadReason
    message: str

    @property
    def location(self) -> str:
        if self.line is not None:
            return f"{self.source}:{self.line}"
        return f"{self.source} (record {self.index})"

    def __str__(self) -> str:
        return f"{self.location}: {self.reason}: {self.message}"


class RecordError(ValueError):
    """A bad row found in strict mode; ``bad`` records where it is and why it failed."""

    def __init__(self, bad: BadRecord):
        super().__init__(f"{bad}; fix the row or load with strict=False to skip it")
        self.bad = bad


@dataclass
class LoadReport:
    """Counts of what one load kept and skipped, with the first few skipped rows per reason."""

    source: str
    num_rows: int = 0
    num_loaded: int = 0
    num_auto_ids: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    examples: list[BadRecord] = field(default_factory=list)
    max_examples_per_reason: int = 5

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def add(self, bad: BadRecord) -> None:
        self.skipped[str(bad.reason)] += 1
        if self.skipped[str(bad.reason)] <= self.max_examples_per_reason:
            self.examples.append(bad)
            logger.warning("skipping row %s", bad)

    def summary(self) -> str:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items())) or "none"
        return (
            f"{self.source}: loaded {self.num_loaded} of {self.num_rows} rows, "
            f"skipped {self.num_skipped} ({reasons}), generated {self.num_auto_ids} ids"
        )

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict for run metadata files."""
        return {
            "source": self.source,
            "num_rows": self.num_rows,
            "num_loaded": self.num_loaded,
            "num_skipped": self.num_skipped,
            "num_auto_ids": self.num_auto_ids,
            "skipped": dict(sorted(self.skipped.items())),
            "examples": [
                {"location": b.location, "reason": str(b.reason), "message": b.message}
                for b in self.examples
            ],
        }


def content_id(prompt: str, response: str) -> str:
    """Return the content-hash id: 16 hex digits of SHA-256 over ``[prompt, response]``."""
    payload = json.dumps([prompt, response], ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(payload).hexdigest()[:16]


def _first_invalid_utf8(value: Any, path: str) -> str | None:
    """Return the path of the first string in ``value`` that cannot be encoded as UTF-8.

    Readers decode input bytes with ``errors="surrogateescape"``, which turns each invalid
    byte into a lone surrogate; JSON ``\\ud800``-style escapes produce lone surrogates too.
    """
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            chunk = value[e.start : e.end]
            try:
                description = f"bytes {chunk.encode('utf-8', 'surrogateescape')!r}"
            except UnicodeEncodeError:  # a lone surrogate from a JSON escape, not a raw byte
                description = f"lone surrogate {ascii(chunk)}"
            return f"{path} ({description} at character {e.start})"
        return None
    if isinstance(value, Mapping):
        for k, v in value.items():
            found = _first_invalid_utf8(k, f"{path} key") or _first_invalid_utf8(v, f"{path}.{k}")
            if found:
                return found
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            found = _first_invalid_utf8(v, f"{path}[{i}]")
            if found:
                return found
    return None


class RecordValidator:
    """Turn raw rows into records, skipping bad ones and counting them in a report."""

    def __init__(
        self,
        source: str,
        *,
        fields: FieldNames = DEFAULT_FIELDS,
        max_chars: int | None = 100_000,
        strict: bool = False,
        auto_id: AutoId = "content",
        max_examples_per_reason: int = 5,
    ):
        if auto_id not in ("content", "index"):
            raise ValueError(f"auto_id must be 'content' or 'index', got {auto_id!r}")
        if max_chars is not None and max_chars < 1:
            raise ValueError(f"max_chars must be positive or None, got {max_chars}")
        self.fields = fields
        self.max_chars = max_chars
        self.strict = strict
        self.auto_id = auto_id
        self.report = LoadReport(source, max_examples_per_reason=max_examples_per_reason)
        self._seen_ids: set[str] = set()

    def reject(self, index: int, line: int | None, reason: BadReason, message: str) -> None:
        """Count a bad row, or raise RecordError in strict mode."""
        bad = BadRecord(self.report.source, index, line, reason, message)
        if self.strict:
            raise RecordError(bad)
        self.report.add(bad)

    def add_row(self, row: Any, index: int, line: int | None = None) -> Record | None:
        """Validate one row; return its record, or None when the row was skipped."""
        self.report.num_rows += 1
        checked = self._check(row, index)
        if isinstance(checked, tuple):
            self.reject(index, line, *checked)
            return None
        self.report.num_loaded += 1
        return checked

    def _check(self, row: Any, index: int) -> Record | tuple[BadReason, str]:
        f = self.fields
        if not isinstance(row, Mapping):
            return BadReason.WRONG_TYPE, f"row is a {type(row).__name__}, expected an object"

        # required text fields
        texts = {}
        for name in (f.prompt, f.response):
            value = row.get(name)
            if value is None:
                return BadReason.MISSING_FIELD, f"field {name!r} is missing or null"
            if not isinstance(value, str):
                return BadReason.WRONG_TYPE, (
                    f"field {name!r} is a {type(value).__name__}, expected a string"
                )
            texts[name] = value

        # id: given or generated
        raw_id = row.get(f.id) if f.id is not None else None
        if isinstance(raw_id, str) and not raw_id.strip():
            raw_id = None  # an empty CSV cell means "no id"
        if raw_id is not None and not (
            isinstance(raw_id, str) or (isinstance(raw_id, int) and not isinstance(raw_id, bool))
        ):
            return BadReason.WRONG_TYPE, (
                f"id field {f.id!r} is a {type(raw_id).__name__}, expected a string or integer"
            )

        bad_utf8 = _first_invalid_utf8(dict(row), "row")
        if bad_utf8:
            return BadReason.INVALID_UTF8, f"text is not valid UTF-8 in {bad_utf8}"

        for name, value in texts.items():
            if not value.strip():
                return BadReason.EMPTY_FIELD, f"field {name!r} is empty"

        if self.max_chars is not None:
            for name, value in texts.items():
                if len(value) > self.max_chars:
                    return BadReason.TOO_LONG, (
                        f"field {name!r} has {len(value)} characters, over max_chars="
                        f"{self.max_chars}"
                    )

        prompt, response = texts[f.prompt], texts[f.response]
        if raw_id is not None:
            record_id = str(raw_id)
        else:
            self.report.num_auto_ids += 1
            record_id = content_id(prompt, response) if self.auto_id == "content" else str(index)
        if record_id in self._seen_ids:
            return BadReason.DUPLICATE_ID, f"id {record_id!r} was already loaded from this file"
        self._seen_ids.add(record_id)

        skip = {f.prompt, f.response} | ({f.id} if f.id is not None else set())
        extra = {k: v for k, v in row.items() if k not in skip}
        return Record(record_id, prompt, response, extra)
