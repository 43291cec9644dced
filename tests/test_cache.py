"""The zarr store of reduced spectrograms."""

from __future__ import annotations

import numpy as np
import pytest

from fastspectro_dask.cache import FileKey, ReducedCache
from fastspectro_dask.io import open_esa
from fastspectro_dask.reduce import DEFAULT_CATEGORIES, reduce_dataset


@pytest.fixture(scope="module")
def reduced(ees_file):
    return reduce_dataset(open_esa(ees_file)).compute()


def test_roundtrip_float32_and_summary(tmp_path, ees_file, reduced):
    cache = ReducedCache(tmp_path / "c.zarr")
    key = FileKey.of(ees_file)
    name = cache.entry_name(key, "data", DEFAULT_CATEGORIES, "ees", 13616)
    assert not cache.has(name) and cache.summary(name) is None
    cache.write(name, reduced, summary={"n": 3}, key=key)
    assert cache.has(name)
    back = cache.read(name)
    np.testing.assert_array_equal(
        back["values"].values, reduced["values"].values.astype(np.float32)
    )
    np.testing.assert_array_equal(
        back["energy"].values, reduced["energy"].values.astype(np.float32)
    )
    np.testing.assert_array_equal(back["time"].values, reduced["time"].values)
    assert list(back["category"].values) == list(DEFAULT_CATEGORIES)
    assert back.attrs["instrument"] == "ees" and back.attrs["units"] == "Counts"
    assert cache.summary(name) == {"n": 3}
    assert cache.reads == 1 and cache.writes == 1


def test_key_changes_with_file_and_parameters(tmp_path, ees_file):
    cache = ReducedCache(tmp_path / "c.zarr")
    key = FileKey.of(ees_file)
    a = cache.entry_name(key, "data", DEFAULT_CATEGORIES)
    assert a == cache.entry_name(FileKey.of(ees_file), "data", DEFAULT_CATEGORIES)
    assert a != cache.entry_name(key, "eflux", DEFAULT_CATEGORIES)
    assert a != cache.entry_name(key, "data", {"all": ((0, 360),)})
    touched = FileKey(key.path, key.size, key.mtime_ns + 1)
    assert a != cache.entry_name(touched, "data", DEFAULT_CATEGORIES)


def test_incomplete_entry_is_not_served(tmp_path, reduced, ees_file):
    import zarr

    cache = ReducedCache(tmp_path / "c.zarr")
    name = "ees-1-x"
    cache.write(name, reduced, key=FileKey.of(ees_file))
    zarr.open_group(str(cache.path), mode="a", path=name).attrs["complete"] = False
    assert not cache.has(name)
    with pytest.raises(KeyError):
        cache.read(name)
    assert cache.summary(name) is None


def test_prune_and_pickle(tmp_path, reduced):
    import pickle

    cache = ReducedCache(tmp_path / "c.zarr")
    for name in ("a", "b"):
        cache.write(name, reduced)
    assert cache.prune({"a"}) == 1
    assert cache.has("a") and not cache.has("b")
    again = pickle.loads(pickle.dumps(cache))
    assert again.path == cache.path and again.has("a")
