"""WriteBackBuffer against a dict: the latest row per id, sorted ids, overlay over disk reads."""
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from tierstore.writeback import WriteBackBuffer

DIM = 3
ops = st.lists(st.tuples(st.sampled_from(["add", "drop", "clear"]),
                         st.lists(st.integers(0, 20), min_size=1, max_size=6, unique=True),
                         st.integers(0, 1000)), max_size=25)


@given(ops=ops, wanted=st.lists(st.integers(0, 20), max_size=10))
def test_buffer_matches_a_dict(ops, wanted):
    buf, model = WriteBackBuffer(DIM, np.float32, limit=5), {}
    for op, ids, value in ops:
        ids = np.asarray(ids, dtype=np.int64)
        if op == "add":
            rows = (value + np.arange(len(ids) * DIM).reshape(-1, DIM)).astype(np.float32)
            buf.add(ids, rows)
            model.update({int(i): r for i, r in zip(ids, rows)})
        elif op == "drop":
            buf.drop(ids)
            for i in ids:
                model.pop(int(i), None)
        else:
            buf.clear()
            model.clear()
        assert buf.ids.tolist() == sorted(model) and len(buf) == len(model)
        assert buf.full == (len(model) >= 5)
        for i, r in zip(buf.ids, buf.rows):
            np.testing.assert_array_equal(r, model[int(i)])
    wanted = np.asarray(wanted, dtype=np.int64)
    disk = np.full((len(wanted) + 2, DIM), -1.0, dtype=np.float32)
    positions = np.arange(2, len(wanted) + 2)           # rows of the ids, after two others
    buf.overlay(wanted, disk, positions)
    assert (disk[:2] == -1).all()
    for k, i in enumerate(wanted):
        expected = model.get(int(i), np.full(DIM, -1.0, dtype=np.float32))
        np.testing.assert_array_equal(disk[k + 2], expected)
