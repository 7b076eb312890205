"""PEP 517 build backend: setuptools' own, plus mypy as a build requirement when the
optional mypyc build is asked for (``TIDEMQ_MYPYC=1``, see setup.py), so that the default
pure-Python install never downloads it."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403  (the rest of the backend, unchanged)

# mypyc ships inside mypy; the range the compiled build is tested with in CI (.ci/run).
MYPYC_REQUIRES = ["mypy>=1.20,<2"]
ENV = "TIDEMQ_MYPYC"


def _wanted() -> bool:
    return os.environ.get(ENV, "").strip().lower() in ("1", "true", "yes")


def _requires(
    hook: Callable[[dict[str, Any] | None], list[str]], config_settings: dict[str, Any] | None
) -> list[str]:
    if not _wanted():
        return hook(config_settings)
    # setuptools runs setup.py to collect its requirements, and setup.py can only compile
    # once mypy is installed: ask with the compiled build switched off, then add mypy.
    value = os.environ.pop(ENV)
    try:
        return [*hook(config_settings), *MYPYC_REQUIRES]
    finally:
        os.environ[ENV] = value


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    return _requires(_setuptools.get_requires_for_build_wheel, config_settings)


def get_requires_for_build_editable(config_settings: dict[str, Any] | None = None) -> list[str]:
    return _requires(_setuptools.get_requires_for_build_editable, config_settings)
