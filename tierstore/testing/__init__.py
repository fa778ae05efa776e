"""Test helpers shipped with tierstore, so users can check their own configs."""
from .stateful import StoreMachine, machine_for, run_store_machine

__all__ = ["StoreMachine", "machine_for", "run_store_machine"]
