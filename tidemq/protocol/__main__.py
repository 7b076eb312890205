"""``python -m tidemq.protocol``: which build of the protocol package is in use.

Prints one line per module, compiled (a mypyc extension module) or interpreted, and exits
with status 0; ``--expect-compiled`` makes it exit 1 unless every module is compiled.
"""

from __future__ import annotations

import importlib
import sys

from . import COMPILED

# The modules the mypyc build compiles (setup.py's MYPYC_MODULES, which says why the others
# stay interpreted).
MODULES = ("_wire", "codec", "connection", "topics")


def compiled_modules() -> dict[str, bool]:
    """Each module's name and whether it was loaded from an extension module."""
    out = {}
    for name in MODULES:
        module = importlib.import_module(f"{__package__}.{name}")
        path = getattr(module, "__file__", None) or ""
        out[name] = not path.endswith((".py", ".pyc"))
    return out


def main(argv: list[str]) -> int:
    modules = compiled_modules()
    build = "compiled (mypyc)" if COMPILED else "pure Python"
    sys.stdout.write(f"tidemq.protocol: {build}\n")
    for name, compiled in modules.items():
        sys.stdout.write(f"  {name:<13} {'compiled' if compiled else 'interpreted'}\n")
    if "--expect-compiled" in argv and not (COMPILED and all(modules.values())):
        sys.stdout.write("expected every module to be compiled\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
