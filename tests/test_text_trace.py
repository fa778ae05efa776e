"""The real-text trace kept in the repository (tools/make_trace.py) and its loader."""
import json
from pathlib import Path

import numpy as np

from tierstore.hashing import NgramHasher
from tierstore.workloads import text_trace

TRACE = Path(__file__).resolve().parents[1] / "tools" / "data" / "spamassassin.npz"


def test_text_trace_hashes_each_document_as_one_sequence():
    with np.load(TRACE) as z:
        tokens, starts, config = z["tokens"].astype(np.int64), z["doc_starts"], \
            json.loads(str(z["config"]))
    hasher = NgramHasher(config["vocab_size"], max_ngram=config["max_ngram"],
                         heads=config["heads"], table_size=config["table_size"],
                         seed=config["seed"], pad_id=config["pad_id"])
    assert hasher.num_rows == config["num_rows"]
    # the first two documents, cut at the second's end
    ids = text_trace(TRACE, tokens=int(starts[1]) + 1)
    assert len(ids) == int(starts[2]) * hasher.ids_per_token
    want = np.concatenate([hasher(tokens[:starts[1]]).reshape(-1),
                           hasher(tokens[starts[1]:starts[2]]).reshape(-1)])
    np.testing.assert_array_equal(ids, want)
    # a document starts afresh (pad before it), not where the previous one ended
    joined = hasher(tokens[:starts[2]]).reshape(-1)
    assert not np.array_equal(ids, joined)
