"""tools/crash_test.py loaded as a module: its crash harness and its self-checking row pattern."""
from tool_loader import load_tool


def load():
    return load_tool("crash_test.py")
