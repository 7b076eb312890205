"""Build hook for the compiled speed-ups (everything else is in pyproject.toml).

``pip install .`` builds the package and, when a C compiler and the Python headers are
there, one small C extension: the WebSocket frame scanner (tidemq/transport/_wsframe.c). It
is optional: if it cannot be compiled the install goes on and the pure-Python code of the
same path is used (``TIDEMQ_NO_EXTENSIONS=1`` skips it on purpose). ``tidemq --version``
tells whether it is in use.

``TIDEMQ_MYPYC=1 pip install .`` also compiles the modules below with mypyc: the same
typed source, built into C extension modules installed next to it (Python prefers an
extension module over the ``.py`` of the same name). It needs a C compiler and the Python
headers; the build backend (build_backend/tidemq_build.py) adds mypy to the build
requirements for that case only. ``python -m tidemq.protocol`` and ``tidemq --version``
tell which build is in use.
"""

from __future__ import annotations

import os

from setuptools import Extension, setup

# The modules compiled, measured with bench/codec.py (docs/benchmarks.md): the framer and
# decoders, the connection state machine, topic checks and the wire primitives. Not
# compiled, on purpose:
# * packets.py, properties.py (the frozen dataclasses of the public packet model): mypyc
#   makes a compiled module's classes native, and native classes check every field's type
#   on assignment (``Connect(protocol_version=5)``, ``Publish(retain=1)`` would raise
#   TypeError), refuse ``object.__new__`` and ``__class__`` assignment (the decoder's
#   trusted paths) and cannot be subclassed from Python; as plain classes in a compiled
#   module, mypyc 1.20 compiles ``==``/``!=`` between them as identity, ignoring the
#   dataclass's ``__eq__``. Compiled code only uses them as foreign Python classes.
# * enums.py, reason_codes.py (IntEnum tables, the same equality risk), errors.py (mypyc
#   does not initialise class-level defaults such as ``reason_code`` on Exception
#   subclasses). None of these is on the hot path.
MYPYC_MODULES = [
    "tidemq/protocol/_wire.py",
    "tidemq/protocol/codec.py",
    "tidemq/protocol/connection.py",
    "tidemq/protocol/topics.py",
]


def wants_mypyc() -> bool:
    return os.environ.get("TIDEMQ_MYPYC", "").strip().lower() in ("1", "true", "yes")


def wants_c() -> bool:
    return os.environ.get("TIDEMQ_NO_EXTENSIONS", "").strip().lower() not in ("1", "true", "yes")


def ext_modules() -> list[object]:
    modules: list[object] = []
    if wants_c():
        # optional: a failed compile is a warning, and websocket.py falls back to Python.
        modules.append(
            Extension(
                "tidemq.transport._wsframe",
                ["tidemq/transport/_wsframe.c"],
                optional=True,
                extra_compile_args=["-O2"],
            )
        )
    if wants_mypyc():
        from mypyc.build import mypycify

        # group_name: the shared runtime library is tidemq__mypyc.*.so rather than a hash.
        modules.extend(mypycify(MYPYC_MODULES, opt_level="3", group_name="tidemq"))
    return modules


setup(ext_modules=ext_modules())
