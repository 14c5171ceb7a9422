"""Result shard files of a scoring run: atomic writes, completion markers, manifest, merge.

Layout of an output directory::

    manifest.json                      settings every process and every resume must share
    shards/p00000-c0000000.jsonl       rows of chunk 0 of process 0, sorted by index
    shards/p00000-c0000000.done        marker: row count, byte size, SHA-256 of the shard
    shards/p00000.done                 marker: process 0 finished all of its chunks
    scores.jsonl                       merged rows of every process, sorted by index

A row is one JSON line ``{"index": i, "id": "...", "<score>": x, ...}`` in a fixed key
order. Every file is written to a temporary name in the same directory, flushed to disk and
renamed over its final name, so a reader (or a resumed run) never sees a partial file. A
chunk counts as done only when its marker exists and the shard's size and SHA-256 match the
marker; a shard without a valid marker is scored again. The merge copies shard lines byte
for byte, so the merged file depends only on the shards, not on when they were written.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SHARD_DIR = "shards"
MERGED = "scores.jsonl"
FORMAT_VERSION = 1
_TEMP_TAG = ".tmp-"


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` contains either the old or the new bytes."""
    path = Path(path)
    temp = path.with_name(f"{path.name}{_TEMP_TAG}{os.getpid()}")
    with open(temp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # persist the rename itself
    finally:
        os.close(directory)


def shard_stem(process_id: int, chunk: int) -> str:
    return f"p{process_id:05d}-c{chunk:07d}"


def remove_stale_temp_files(shard_dir: Path, process_id: int) -> int:
    """Delete temporary files a killed run of ``process_id`` left behind; return the count.

    Only this process's files are touched, because other processes may be writing theirs.
    """
    count = 0
    for path in Path(shard_dir).glob(f"p{process_id:05d}*{_TEMP_TAG}*"):
        path.unlink(missing_ok=True)
        count += 1
    if count:
        logger.info("removed %d temporary files of an interrupted run in %s", count, shard_dir)
    return count


def encode_rows(
    indices_n: Sequence[int], ids: Sequence[str], scores: Mapping[str, np.ndarray]
) -> bytes:
    """Serialize rows as JSON lines with keys ``index``, ``id``, then the scores in order.

    Scores are written as the shortest decimal that reads back as the same float64, so a
    float32 score round-trips exactly.
    """
    names = list(scores)
    columns = [np.asarray(scores[name], dtype=np.float64) for name in names]
    lines = []
    for row, (index, example_id) in enumerate(zip(indices_n, ids, strict=True)):
        record: dict[str, Any] = {"index": int(index), "id": example_id}
        for name, column in zip(names, columns, strict=True):
            record[name] = float(column[row])
        lines.append(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
    return "".join(lines).encode("utf-8")


def write_chunk(shard_dir: Path, process_id: int, chunk: int, data: bytes, rows: int) -> None:
    """Write one chunk's shard, then its completion marker."""
    stem = shard_stem(process_id, chunk)
    atomic_write(shard_dir / f"{stem}.jsonl", data)
    marker = {"rows": rows, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    atomic_write(shard_dir / f"{stem}.done", json.dumps(marker).encode())


def chunk_done(shard_dir: Path, process_id: int, chunk: int) -> bool:
    """Return whether the chunk's shard is complete and matches its marker."""
    stem = shard_stem(process_id, chunk)
    marker_path, shard_path = shard_dir / f"{stem}.done", shard_dir / f"{stem}.jsonl"
    if not marker_path.exists() or not shard_path.exists():
        return False
    try:
        marker = json.loads(marker_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        logger.warning("%s is unreadable; scoring chunk %d again", marker_path, chunk)
        return False
    data = shard_path.read_bytes()
    if len(data) != marker.get("bytes") or hashlib.sha256(data).hexdigest() != marker.get("sha256"):
        logger.warning("%s does not match its marker; scoring chunk %d again", shard_path, chunk)
        return False
    return True


def process_marker(shard_dir: Path, process_id: int) -> Path:
    return Path(shard_dir) / f"p{process_id:05d}.done"


def write_process_marker(shard_dir: Path, process_id: int, info: Mapping[str, Any]) -> None:
    atomic_write(process_marker(shard_dir, process_id), json.dumps(dict(info)).encode())


def read_process_marker(shard_dir: Path, process_id: int) -> dict[str, Any] | None:
    path = process_marker(shard_dir, process_id)
    if not path.exists():
        return None
    return json.loads(path.read_text())


def check_manifest(out_dir: Path, manifest: Mapping[str, Any]) -> None:
    """Write ``manifest`` to a new run directory, or check that it matches the existing one.

    Raises ValueError naming each differing setting, because resuming with other settings
    would mix incompatible shards.
    """
    path = Path(out_dir) / MANIFEST
    wanted = {"format": FORMAT_VERSION, **manifest}
    if path.exists():
        existing = json.loads(path.read_text())
        keys = sorted(set(existing) | set(wanted))
        changed = [k for k in keys if existing.get(k) != wanted.get(k)]
        if changed:
            details = "; ".join(
                f"{k}: {existing.get(k)!r} -> {wanted.get(k)!r}" for k in changed[:6]
            )
            raise ValueError(
                f"{path} belongs to a run with other settings ({details}); resume with the "
                f"same settings or write to a new output directory"
            )
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, (json.dumps(wanted, indent=2, sort_keys=True) + "\n").encode())


def _process_lines(shard_dir: Path, process_id: int, num_chunks: int) -> Iterator[bytes]:
    for chunk in range(num_chunks):
        with open(shard_dir / f"{shard_stem(process_id, chunk)}.jsonl", "rb") as f:
            yield from f


def _index_of(line: bytes) -> int:
    return json.loads(line)["index"]


def merge_shards(out_dir: Path, destination: Path | None = None) -> int:
    """Merge every process's shards into one file sorted by example index.

    Streams through the shards (memory does not grow with the corpus) and checks that every
    shard matches its marker and that the indices are exactly ``0 .. N-1``, each once, where
    ``N`` is the number of valid records the processes counted. Returns ``N``. Raises
    ValueError when a process has not finished or the shards do not cover the corpus
    exactly.
    """
    out_dir = Path(out_dir)
    manifest_path = out_dir / MANIFEST
    if not manifest_path.exists():
        raise FileNotFoundError(f"{manifest_path} not found; is {out_dir} a scoring run?")
    manifest = json.loads(manifest_path.read_text())
    shard_dir = out_dir / SHARD_DIR
    num_processes = int(manifest["num_processes"])
    markers = []
    for process_id in range(num_processes):
        marker = read_process_marker(shard_dir, process_id)
        if marker is None:
            raise ValueError(
                f"process {process_id} of {num_processes} has not finished (no "
                f"{process_marker(shard_dir, process_id).name}); run it again to complete "
                f"its shards, then merge"
            )
        for chunk in range(marker["num_chunks"]):
            if not chunk_done(shard_dir, process_id, chunk):
                raise ValueError(
                    f"shard {shard_stem(process_id, chunk)} in {shard_dir} is missing or does not "
                    f"match its marker; run process {process_id} again to rescore it, then merge"
                )
        markers.append(marker)
    totals = {m["num_corpus_examples"] for m in markers}
    if len(totals) != 1:
        raise ValueError(f"processes counted different corpus sizes {sorted(totals)}")
    expected = totals.pop()

    streams = [
        ((_index_of(line), line) for line in _process_lines(shard_dir, p, m["num_chunks"]))
        for p, m in enumerate(markers)
    ]
    destination = Path(destination) if destination is not None else out_dir / MERGED
    temp = destination.with_name(f"{destination.name}{_TEMP_TAG}{os.getpid()}")
    count = 0
    with open(temp, "wb") as f:
        for index, line in heapq.merge(*streams, key=lambda pair: pair[0]):
            if index != count:
                temp.unlink()
                problem = "repeated" if index < count else f"missing (next is {index})"
                raise ValueError(f"example index {count} is {problem} in the shards of {out_dir}")
            f.write(line)
            count += 1
        f.flush()
        os.fsync(f.fileno())
    if count != expected:
        temp.unlink()
        raise ValueError(
            f"shards of {out_dir} hold {count} rows but the corpus has {expected} examples"
        )
    os.replace(temp, destination)
    logger.info("merged %d rows from %d processes into %s", count, num_processes, destination)
    return count
