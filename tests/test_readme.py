"""Every ```python block of the README runs as written, as a program of its own."""
import importlib.util
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BLOCKS = re.findall(r"^```python\n(.*?)^```$", (ROOT / "README.md").read_text(), re.S | re.M)
NEEDS_TORCH = re.compile(r"^\s*(import|from)\s+(torch|tierstore\.(torch|distributed|engram))\b",
                         re.M)


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_block_runs(code, tmp_path):
    if NEEDS_TORCH.search(code) and importlib.util.find_spec("torch") is None:
        pytest.skip("this README block needs torch (see the README: installing torch)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
        MASTER_PORT=str(free_port()))    # the sharding block's own port may be taken
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{code}\n--- stderr:\n{out.stderr}"
