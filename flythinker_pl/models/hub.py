"""Whether a backbone name can load, answered before torch and transformers are imported where it can
be: offline (HF_HUB_OFFLINE), a hub id ("org/name") that is neither a local folder nor in the local
Hugging Face cache cannot load, and saying so takes a blink instead of 20 s of imports. Online, only
loading answers (backbones.explained words that error the same way)."""

from __future__ import annotations

import os
from pathlib import Path

from ..config import REASONER_METHODS, Config, ConfigError

OFFLINE_FIX = (
    "HF_HUB_OFFLINE=1 is set (every make target sets it), so only local files load: pass a local path "
    "(a folder saved with save_pretrained or downloaded with `hf download`), or unset HF_HUB_OFFLINE "
    "where a network exists"
)


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def not_loadable(key: str, location: str, fix: str) -> ConfigError:
    return ConfigError(f"{key}={location!r} is neither a local folder nor a loadable hub model: {fix}")


def backbone_names(cfg: Config) -> dict[str, str]:
    """The model names a run loads, by config key."""
    names = {"generator.name": cfg.generator.name}
    if cfg.method in REASONER_METHODS and not cfg.reasoner.shared_base:
        names["reasoner.name"] = cfg.reasoner.name
    return names


def check_backbones(cfg: Config) -> None:
    """Offline, every hub id the run loads must be in the local Hugging Face cache (its config.json)."""
    if not offline():
        return
    for key, name in backbone_names(cfg).items():
        if name.count("/") == 1 and not Path(name).expanduser().exists() and not _cached(name):
            raise not_loadable(key, name, OFFLINE_FIX)


def _cached(hub_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache  # light: no torch, no transformers

    try:
        return isinstance(try_to_load_from_cache(hub_id, "config.json"), str)
    except ValueError:  # not a valid repo id either
        return False
