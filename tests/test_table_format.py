"""What a table is (TableFormat, saved with it) apart from how it is opened (StoreConfig)."""
from __future__ import annotations

import numpy as np
import pytest

import tierstore as ts

TINY = ts.StoreConfig(device_rows=2, ram_rows=4)


def test_format_is_saved_and_read_back(tmp_path):
    path = tmp_path / "s"
    with ts.create(path, 50, 4, "float32", init=1.5, config=TINY, codec="zstd",
                   allow_nonfinite=True) as store:
        created = store.format
    with ts.open(path, readonly=True) as store:
        assert store.format == created
        assert store.format == ts.TableFormat(50, 4, "float32", {"id": "zstd", "level": 3, "dict_size": 0},
                                              allow_nonfinite=True, init_kind="constant", init_value=1.5)
    with ts.create(tmp_path / "a", 3, 2, "float64", init=np.ones((3, 2)), config=TINY) as store:
        assert store.format.every_row_stored and store.format.constant is None


def test_open_asking_another_codec_is_refused_not_misreported(tmp_path):
    """A raw store opened with codec='zstd' used to open and report zstd."""
    path = tmp_path / "s"
    ts.create(path, 20, 4, "float32", config=TINY).close()
    with pytest.raises(ts.ConfigError, match="the store's codec is {'id': 'raw'}"):
        ts.open(path, TINY, codec="zstd")
    with pytest.raises(ts.ConfigError, match="codec"):
        ts.open(path, TINY, codec={"id": "zstd", "level": 5})
    with ts.open(path, TINY, codec="raw") as store:        # the lock was released
        assert store.codec.codec_id == "raw" and store.format.codec == {"id": "raw"}
    with pytest.raises(ts.ConfigError, match="unknown codec"):
        ts.open(path, TINY, codec="lz4")
    zpath = tmp_path / "z"
    ts.create(zpath, 20, 4, "float32", config=TINY, codec={"id": "zstd", "level": 7}).close()
    with ts.open(zpath, TINY, codec="zstd") as store:       # a name matches any zstd store
        assert store.format.codec["level"] == 7
    with pytest.raises(ts.ConfigError, match="codec"):
        ts.open(zpath, TINY, codec={"id": "zstd", "level": 3})


def test_allow_nonfinite_survives_a_plain_reopen(tmp_path):
    """A store created with allow_nonfinite=True used to refuse NaN after a plain reopen."""
    path = tmp_path / "s"
    ts.create(path, 20, 4, "float32", config=TINY, allow_nonfinite=True).close()
    with ts.open(path, TINY) as store:
        store.update([3], np.full((1, 4), np.nan, np.float32))
    with ts.open(path, TINY, readonly=True) as store:
        assert np.isnan(store.lookup([3])).all()
    with pytest.raises(ts.ConfigError, match="created with allow_nonfinite=True, not False"):
        ts.open(path, TINY, allow_nonfinite=False)
    plain = tmp_path / "p"
    ts.create(plain, 20, 4, "float32", config=TINY).close()
    with ts.open(plain, TINY) as store:
        with pytest.raises(ts.NonFiniteRowError, match="create the store with allow_nonfinite=True"):
            store.update([3], np.full((1, 4), np.nan, np.float32))
    with pytest.raises(ts.ConfigError, match="created with allow_nonfinite=False"):
        ts.open(plain, TINY, allow_nonfinite=True)


def test_a_raw_store_opens_whatever_the_old_config_said(tmp_path):
    """``codec="int8", allow_nonfinite=True`` in a config could not open a raw store: the
    config no longer holds table properties, so nothing in it can contradict the store."""
    path = tmp_path / "s"
    ts.create(path, 20, 4, "float32", config=TINY).close()
    with pytest.raises(TypeError):
        ts.StoreConfig(codec="int8")
    with ts.open(path, TINY) as store:
        assert store.format.codec == {"id": "raw"} and not store.format.allow_nonfinite


def test_saved_configs_with_table_fields_still_load():
    old = {"device_rows": 2, "ram_rows": 3, "codec": "raw", "allow_nonfinite": False}
    assert ts.StoreConfig.from_dict(old) == ts.StoreConfig(device_rows=2, ram_rows=3)
