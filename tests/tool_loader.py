"""Scripts under tools/ loaded as modules, once per test session."""
import importlib.util
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def load_tool(filename: str):
    """``tools/<filename>`` as a module (kept in sys.modules: dataclasses look their module up)."""
    name = "tierstore_tool_" + Path(filename).stem
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, TOOLS / filename)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
