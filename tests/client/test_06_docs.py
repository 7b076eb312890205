"""Every ``python`` block of docs/client.md is a complete program: run each one (as a
user would, in a fresh interpreter) against TideMQ and Mosquitto."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest

from .conftest import MosquittoServer, TideMQServer

DOC = Path(__file__).resolve().parents[2] / "docs" / "client.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
WAIT = 20.0


def test_the_guide_has_examples() -> None:
    assert len(BLOCKS) >= 6
    assert all("asyncio.run(main())" in block for block in BLOCKS)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
async def test_example_runs(server: TideMQServer | MosquittoServer, index: int) -> None:
    code = (
        BLOCKS[index]
        .replace("mqtt://localhost:1883", server.url)
        .replace("ws://localhost:8083/mqtt", server.ws_url)
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), WAIT)
    assert proc.returncode == 0, err.decode()
    assert out, "every example prints what it did"
