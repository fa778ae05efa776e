"""The three tiers: device and RAM slabs (memory.py), LMDB on disk (disk.py)."""
