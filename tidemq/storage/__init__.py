"""Durable broker state behind one interface, ``tidemq.storage.api.Storage``.

The broker imports only ``tidemq.storage.api``; the composition root picks a backend with
``create_storage`` / ``open_storage``. Backends and their drivers are imported only when
chosen, so ``redis``, ``asyncpg`` and ``aiomysql`` are needed only by those who use them::

    storage = await open_storage("sqlite", "", data_dir="./data", durability="sync")

See docs/storage.md.
"""

from __future__ import annotations

import importlib
from typing import Final

from tidemq.storage.api import BACKENDS, DURABILITY_MODES, Storage, StorageError

__all__ = ["DEFAULT_URLS", "create_storage", "open_storage"]

#: The URL each backend uses when ``storage.url`` is empty.
DEFAULT_URLS: Final[dict[str, str]] = {
    "memory": "",
    "sqlite": "",  # data_dir/tidemq.db
    "redis": "redis://127.0.0.1:6379/0",
    "postgres": "postgresql://127.0.0.1:5432/tidemq",
    "mysql": "mysql://tidemq@127.0.0.1:3306/tidemq",
}

# backend → (module, the pip extra that installs its driver)
_MODULES: Final[dict[str, tuple[str, str]]] = {
    "memory": ("tidemq.storage.memory", ""),
    "sqlite": ("tidemq.storage.sqlite", ""),
    "redis": ("tidemq.storage.redis", "redis"),
    "postgres": ("tidemq.storage.postgres", "postgres"),
    "mysql": ("tidemq.storage.mysql", "mysql"),
}


def create_storage(
    backend: str, url: str, data_dir: str, durability: str, *, shared: bool = False
) -> Storage:
    """A ``Storage`` for *backend*, not yet opened.

    Args:
        backend: ``memory``, ``sqlite``, ``redis``, ``postgres`` or ``mysql``.
        url: where the data lives; empty for the backend's default (``DEFAULT_URLS``).
            SQLite takes a file path or ``sqlite:///path`` (relative to *data_dir*).
        data_dir: the broker's data directory (SQLite's file lives there).
        durability: ``sync``, ``batch`` or ``none``.
        shared: open beside a running broker (``tidemq ctl``): no one-broker lock.

    Raises:
        StorageError: an unknown backend or durability, a bad URL, or a missing driver.
    """
    if backend not in BACKENDS:
        raise StorageError(f"unknown storage backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if durability not in DURABILITY_MODES:
        raise StorageError(
            f"unknown durability {durability!r}: use one of {', '.join(DURABILITY_MODES)}"
        )
    module_name, extra = _MODULES[backend]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise StorageError(
            f"the {backend} storage backend needs its driver: pip install 'tidemq[{extra}]' ({exc})"
        ) from exc
    factory = module.from_url
    storage: Storage = factory(url or DEFAULT_URLS[backend], data_dir, durability)
    storage.shared = shared
    return storage


async def open_storage(
    backend: str, url: str, data_dir: str, durability: str, *, shared: bool = False
) -> Storage:
    """``create_storage`` then ``open``: a ready ``Storage``.

    Raises:
        StorageError: as ``create_storage``, or as the backend's ``open``.
        StorageUnavailable: a server backend cannot be reached (retry later).
    """
    storage = create_storage(backend, url, data_dir, durability, shared=shared)
    await storage.open()
    return storage
