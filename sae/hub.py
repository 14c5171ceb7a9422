"""Fetch an SAE folder from the Hugging Face Hub and load it with ``sae.formats.load_sae``.

Only the download is network-bound; everything after it is the local loader. Nothing in
this project calls ``from_hub`` at run time: tests and the demo use local folders.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sae.config import SAEConfig
from sae.formats import load_sae
from sae.params import SAEParams

logger = logging.getLogger(__name__)


def from_hub(
    repo_id: str,
    path: str = "",
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool = False,
    dtype: str | None = None,
    layer: int | None = None,
) -> tuple[SAEParams, SAEConfig]:
    """Download ``repo_id``'s folder ``path`` (e.g. ``layer_14/width_16k/average_l0_71``)
    with ``huggingface_hub.snapshot_download`` and load it.

    Raises ConnectionError when the files are neither cached nor downloadable (offline
    machine, unknown repository or path); the message explains how to load a local copy.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    folder = path.strip("/")
    patterns = [f"{folder}/*", f"{folder}/**/*"] if folder else None
    try:
        root = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            allow_patterns=patterns,
            local_files_only=local_files_only,
        )
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as err:
        raise ConnectionError(
            f"could not fetch {repo_id}/{folder} from the Hugging Face Hub ({err}); on an "
            "offline machine, download the folder elsewhere and pass its local path to "
            "sae.load_sae(path)"
        ) from err

    local = Path(root) / folder
    if not local.exists():
        raise FileNotFoundError(f"{repo_id} has no folder {folder!r} (looked in {local})")
    logger.info("fetched %s/%s to %s", repo_id, folder, local)
    return load_sae(local, dtype=dtype, layer=layer)
