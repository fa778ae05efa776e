"""Placement policy: which rows live in memory, and which of those on the device."""
from .state import POLICY_CODES, CacheState

POLICIES = tuple(POLICY_CODES)

__all__ = ["CacheState", "POLICIES"]
