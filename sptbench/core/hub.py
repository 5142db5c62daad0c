"""Whether the Hugging Face hub can be asked at all, decided fast: `HF_HUB_OFFLINE` (or `HF_DATASETS_OFFLINE` for
data) says no, else one connection attempt of a few seconds does. Without this, a hub id typo or a missing data
folder on a machine without network costs ~25 s of retries before its error."""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

CONNECT_TIMEOUT_S = 3.0
_TRUE = ("1", "ON", "YES", "TRUE")


def offline_env(*names: str) -> str | None:
    """The first of `names` (default: HF_HUB_OFFLINE) set to a true value, else None."""
    for name in names or ("HF_HUB_OFFLINE",):
        if os.environ.get(name, "").strip().upper() in _TRUE:
            return name
    return None


@functools.lru_cache(maxsize=1)
def _unreachable(endpoint: str) -> str | None:
    url = urlparse(endpoint)
    host, port = url.hostname or endpoint, url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        return f"{host} cannot be reached ({e.strerror or type(e).__name__})"
    return None


def hub_unavailable(*env_names: str) -> str | None:
    """Why the hub cannot be asked now (an offline variable, or no connection within a few seconds), else None."""
    name = offline_env(*env_names)
    if name is not None:
        return f"{name} is set"
    return _unreachable(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
