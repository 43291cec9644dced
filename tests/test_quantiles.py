"""Tests of fastspectro_dask.quantiles, with numpy.percentile as the oracle."""

from __future__ import annotations

import json
import tracemalloc

import dask
import dask.array as da
import numpy as np
import pytest
from dask.delayed import Delayed
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fastspectro_dask import quantiles
from fastspectro_dask.errors import EmptyDataError
from fastspectro_dask.quantiles import (
    DEFAULT_MAX_GATHER,
    Histogram,
    coarse_histogram,
    exact_percentile,
    resolve_exact,
    targets_for,
)

PROPERTY_SETTINGS = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

UINT = {np.dtype(np.float32): np.uint32, np.dtype(np.float64): np.uint64}


# ------------------------------------------------------------------------ helpers


def pooled_positive_finite(arrays):
    """The oracle's input: every positive finite value, in the common dtype."""
    flat = [np.asarray(a).ravel() for a in arrays]
    pooled = np.concatenate(flat) if flat else np.empty(0)
    return pooled[np.isfinite(pooled) & (pooled > 0)]


def assert_bit_identical(result, expected):
    """Same Python type, dtype, shape and bit pattern."""
    assert type(result) is type(expected), (type(result), type(expected))
    res, exp = np.asarray(result), np.asarray(expected)
    assert res.dtype == exp.dtype, (res.dtype, exp.dtype)
    assert res.shape == exp.shape
    uint = UINT[exp.dtype]
    assert np.array_equal(res.reshape(-1).view(uint), exp.reshape(-1).view(uint)), (
        result,
        expected,
    )


def _identity(a):
    return a


def as_delayed(a):
    return dask.delayed(_identity, pure=False)(a)


def wrap(a, kind):
    if kind == "dask":
        return da.from_array(a, chunks=max(1, a.size // 3 + 1))
    if kind == "delayed":
        return as_delayed(a)
    return a


@pytest.fixture
def sync_scheduler():
    with dask.config.set(scheduler="sync"):
        yield


# --------------------------------------------------------------------- strategies


def element_strategy(dtype, flavour):
    info = np.finfo(dtype)
    width = 32 if dtype == np.float32 else 64
    special = [
        0.0,
        -0.0,
        np.nan,
        np.inf,
        -np.inf,
        -1.0,
        1.0,
        float(info.max),
        float(info.tiny),
        float(info.smallest_subnormal),
        float(info.smallest_subnormal) * 3,
        float(np.nextafter(info.tiny, 0, dtype=dtype)),  # largest subnormal
    ]
    wide = st.floats(width=width, allow_nan=True, allow_infinity=True)
    decades = st.integers(-35 if width == 32 else -300, 35 if width == 32 else 300).map(
        lambda e: float(dtype(10.0**e))
    )
    if flavour == "ties":
        return st.sampled_from([3.0, 3.0, 7.5, -2.0, 0.0, np.nan])
    if flavour == "denormal":
        return st.integers(1, 40).map(
            lambda k: float(info.smallest_subnormal) * k
        ) | st.sampled_from(special)
    return st.one_of(wide, decades, st.sampled_from(special))


@st.composite
def source_lists(draw, *, kinds=("numpy",), mixed_dtypes=False):
    dtype_mode = draw(st.sampled_from(["float32", "float64"] + (["mixed"] if mixed_dtypes else [])))
    flavour = draw(st.sampled_from(["wide", "wide", "ties", "denormal"]))
    n_sources = draw(st.integers(1, 5))
    arrays = []
    for _ in range(n_sources):
        dt = np.dtype(
            draw(st.sampled_from(["float32", "float64"])) if dtype_mode == "mixed" else dtype_mode
        )
        if flavour == "ties" and draw(st.booleans()):
            # all-equal (or single-value) source
            size = draw(st.integers(0, 30))
            arrays.append(np.full(size, 3.0, dtype=dt))
            continue
        arrays.append(
            draw(hnp.arrays(dt, st.integers(0, 40), elements=element_strategy(dt.type, flavour)))
        )
    kinds_drawn = [draw(st.sampled_from(kinds)) for _ in arrays]
    return arrays, kinds_drawn


NAMED_Q = [0, 100, 50, 95, 99.9]
q_floats = st.floats(0, 100)
q_strategy = st.one_of(
    st.sampled_from(NAMED_Q),
    q_floats,
    st.lists(st.sampled_from(NAMED_Q) | q_floats, min_size=1, max_size=6),
    q_floats.map(np.float64),
    q_floats.map(np.float32),
    st.lists(q_floats, min_size=1, max_size=4).map(lambda v: np.array(v, dtype=np.float32)),
)
max_gather_strategy = st.sampled_from([0, 1, 5, DEFAULT_MAX_GATHER])


# ---------------------------------------------------------------- property tests


@PROPERTY_SETTINGS
@given(data=source_lists(), q=q_strategy, max_gather=max_gather_strategy)
def test_matches_numpy_bit_for_bit(data, q, max_gather):
    arrays, _ = data
    pooled = pooled_positive_finite(arrays)
    with dask.config.set(scheduler="sync"):
        if pooled.size == 0:
            with pytest.raises(EmptyDataError):
                exact_percentile(arrays, q, max_gather=max_gather)
            return
        result = exact_percentile(arrays, q, max_gather=max_gather)
    assert_bit_identical(result, np.percentile(pooled, q))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=source_lists(kinds=("numpy", "dask", "delayed"), mixed_dtypes=True),
    q=q_strategy,
    max_gather=max_gather_strategy,
)
def test_matches_numpy_any_source_kind_and_mixed_dtypes(data, q, max_gather):
    arrays, kinds = data
    pooled = pooled_positive_finite(arrays)
    sources = [wrap(a, k) for a, k in zip(arrays, kinds, strict=True)]
    with dask.config.set(scheduler="sync"):
        if pooled.size == 0:
            with pytest.raises(EmptyDataError):
                exact_percentile(sources, q, max_gather=max_gather, fan_in=2)
            return
        result = exact_percentile(sources, q, max_gather=max_gather, fan_in=2)
    assert_bit_identical(result, np.percentile(pooled, q))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("max_gather", [0, 50, DEFAULT_MAX_GATHER])
def test_large_sample_all_refinement_paths(dtype, max_gather, sync_scheduler):
    rng = np.random.default_rng(42)
    arrays = []
    for i in range(6):
        a = (rng.lognormal(0, 6, 20_000) * rng.choice([-1, 1, 1], 20_000)).astype(dtype)
        a[:: 17 + i] = np.nan
        a[:: 29 + i] = 0
        a[:50] = dtype(1.25)  # heavy ties
        arrays.append(a)
    q = [0, 0.1, 1, 25, 50, 75, 95, 99, 99.9, 100]
    pooled = pooled_positive_finite(arrays)
    assert_bit_identical(
        exact_percentile(arrays, q, max_gather=max_gather), np.percentile(pooled, q)
    )
    for scalar in (50, 99.9, np.float64(12.5), np.float32(95)):
        assert_bit_identical(
            exact_percentile(arrays, scalar, max_gather=max_gather),
            np.percentile(pooled, scalar),
        )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "values",
    [[5.0], [2.5] * 1000, [1e-30, 1e30], [np.inf, -1.0, 0.0, 4.0, np.nan, -0.0]],
    ids=["single", "all-equal", "two-decades", "one-valid"],
)
def test_edge_samples(dtype, values, sync_scheduler):
    a = np.asarray(values, dtype=dtype)
    pooled = pooled_positive_finite([a])
    for q in (0, 50, 100, [0, 33.3, 100], np.float32(10)):
        for max_gather in (0, DEFAULT_MAX_GATHER):
            assert_bit_identical(
                exact_percentile([a, a[:0]], q, max_gather=max_gather), np.percentile(pooled, q)
            )


def test_denormals_only(sync_scheduler):
    for dtype in (np.float32, np.float64):
        tiny = np.finfo(dtype).smallest_subnormal
        a = (np.arange(1, 2000, dtype=dtype) * tiny)[::-1].copy()
        pooled = pooled_positive_finite([a])
        q = [0, 10, 50, 90, 100]
        assert_bit_identical(exact_percentile([a], q, max_gather=0), np.percentile(pooled, q))


def test_result_types_follow_numpy(sync_scheduler):
    a32 = np.linspace(1, 10, 101, dtype=np.float32)
    assert type(exact_percentile([a32], 50)) is np.float32
    assert type(exact_percentile([a32], 50.0)) is np.float32
    assert type(exact_percentile([a32], np.float64(50))) is np.float64
    assert exact_percentile([a32], [50]).dtype == np.float64
    assert exact_percentile([a32], np.array([50], np.float32)).dtype == np.float32
    assert exact_percentile([a32], [[10, 20], [30, 40]]).shape == (2, 2)
    empty_q = exact_percentile([a32], [])
    assert_bit_identical(empty_q, np.percentile(a32, []))


# ---------------------------------------------------------- dtypes and promotion


def test_mixed_dtypes_promote_like_concatenate(sync_scheduler):
    rng = np.random.default_rng(3)
    a32 = rng.lognormal(0, 3, 500).astype(np.float32)
    a64 = rng.lognormal(0, 3, 500)
    a16 = rng.lognormal(0, 1, 500).astype(np.float16)
    ints = rng.integers(-5, 1000, 500)
    big_endian = a64.astype(">f8")
    cases = [
        [a32, a64],
        [a16, a32],
        [ints, a32],
        [big_endian, a32],
        [as_delayed(a32), a64],  # dtype only known after pass 1: pass 1 runs again
        [as_delayed(a16), as_delayed(a32)],
        [as_delayed(ints), a32.astype(">f4")],
    ]
    for case in cases:
        arrays = [c.compute() if isinstance(c, Delayed) else c for c in case]
        pooled = pooled_positive_finite(arrays)
        q = [0, 50, 99.9, 100]
        assert_bit_identical(exact_percentile(case, q, max_gather=3), np.percentile(pooled, q))


@pytest.mark.parametrize(
    "sources",
    [
        [np.arange(1, 10)],
        [np.ones(5, np.float16)],
        [np.ones(3, np.longdouble)],
        [np.array(["a", "b"])],
    ],
)
def test_unsupported_common_dtype(sources, sync_scheduler):
    with pytest.raises(TypeError):
        exact_percentile(sources, 50)
    with pytest.raises(TypeError):
        exact_percentile([as_delayed(s) for s in sources], 50)


# ------------------------------------------------------------- sources on dask


def _load(seed, size, dtype):
    """A lazy 'file' loader."""
    rng = np.random.default_rng(seed)
    a = (rng.lognormal(1, 4, size) * rng.choice([-1, 1, 1, 1], size)).astype(dtype)
    a[::13] = np.nan
    a[::31] = np.inf
    a[::37] = 0
    return a


def _mixed_sources(dtype, n_files=6, size=3000):
    arrays = [_load(seed, size, dtype) for seed in range(n_files)]
    sources = [
        da.from_array(arrays[0].reshape(30, -1), chunks=(7, 40)),  # 2-D, many chunks
        da.from_array(arrays[1], chunks=250),
        arrays[2],
    ] + [dask.delayed(_load)(seed, size, dtype) for seed in range(3, n_files)]
    return sources, arrays


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dask_arrays_and_delayed_loaders_threaded(dtype):
    sources, arrays = _mixed_sources(dtype)
    pooled = pooled_positive_finite(arrays)
    q = [0, 5, 50, 95, 99.9, 100]
    with dask.config.set(scheduler="threads"):
        for max_gather in (0, 20, DEFAULT_MAX_GATHER):
            assert_bit_identical(
                exact_percentile(sources, q, max_gather=max_gather), np.percentile(pooled, q)
            )


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as dask_client,
    ):
        yield dask_client


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_distributed_client_same_answer(client, dtype):
    sources, arrays = _mixed_sources(dtype)
    pooled = pooled_positive_finite(arrays)
    q = [0, 50, 95, 99.9, 100]
    for max_gather in (0, DEFAULT_MAX_GATHER):
        assert_bit_identical(
            exact_percentile(sources, q, client=client, max_gather=max_gather),
            np.percentile(pooled, q),
        )
    assert_bit_identical(
        exact_percentile(sources, 99.9, client=client), np.percentile(pooled, 99.9)
    )


def test_distributed_resolve_exact_with_persisted_histograms(client):
    _, arrays = _mixed_sources(np.float32)
    per_source = [Histogram.from_json(json.dumps(coarse_histogram(a).to_json())) for a in arrays]
    merged = Histogram.merge_all(per_source)
    loaders = [dask.delayed(_load)(seed, 3000, np.float32) for seed in range(len(arrays))]
    q = [1, 50, 99]
    result = resolve_exact(
        loaders, merged, q, client=client, source_histograms=per_source, max_gather=0
    )
    assert_bit_identical(result, np.percentile(pooled_positive_finite(arrays), q))


# ------------------------------------------------------------ building blocks


def _decade_sources(n_sources=10, size=1000):
    """Source i holds values in [10**i, 2 * 10**i): disjoint coarse bins per source."""
    rng = np.random.default_rng(7)
    return [(10.0**i * (1 + rng.random(size))).astype(np.float32) for i in range(n_sources)]


def test_pass2_skips_sources_without_mass_in_target_bins(sync_scheduler):
    arrays = _decade_sources()
    loaded = []

    def load(i):
        loaded.append(i)
        return arrays[i]

    per_source = [coarse_histogram(a) for a in arrays]
    merged = Histogram.merge_all(per_source)
    q = [50, 99.9]
    targets = targets_for(merged, q)
    touching = [i for i, h in enumerate(per_source) if targets.touches(h)]
    assert 1 <= len(touching) <= 3
    loaders = [dask.delayed(load, pure=False)(i) for i in range(len(arrays))]
    for max_gather in (0, DEFAULT_MAX_GATHER):
        loaded.clear()
        result = resolve_exact(
            loaders, merged, q, source_histograms=per_source, max_gather=max_gather
        )
        assert_bit_identical(result, np.percentile(pooled_positive_finite(arrays), q))
        assert set(loaded) == set(touching)
    # the caller may also pass only the touching sources
    result = resolve_exact([arrays[i] for i in touching], merged, q)
    assert_bit_identical(result, np.percentile(pooled_positive_finite(arrays), q))


def test_missing_source_is_detected(sync_scheduler):
    arrays = _decade_sources()
    merged = Histogram.merge_all(coarse_histogram(a) for a in arrays)
    targets = targets_for(merged, 50)
    without = [a for a in arrays if not targets.touches(coarse_histogram(a))]
    for max_gather in (0, DEFAULT_MAX_GATHER):
        with pytest.raises(ValueError, match="missing"):
            resolve_exact(without, merged, 50, max_gather=max_gather)
    with pytest.raises(ValueError, match="missing"):
        resolve_exact([], merged, 50)


def test_targets_for_names_ranks_and_bins():
    rng = np.random.default_rng(5)
    a = rng.lognormal(0, 5, 5000)
    a[::10] = -1
    hist = coarse_histogram(a)
    pooled = np.sort(pooled_positive_finite([a]))
    targets = targets_for(hist, [0, 37.5, 50, 100])
    assert targets.n == pooled.size
    last = pooled.size - 1
    virtual = last * np.array([0, 37.5, 50, 100]) / 100
    # numpy reads the floor and the next order statistic, both the last one at the top
    expected = {last if v >= last else int(v) + k for v in virtual for k in (0, 1)}
    assert targets.ranks.tolist() == sorted(expected)
    top = (pooled.view(np.uint64) >> np.uint64(48)).astype(np.uint16)
    assert np.array_equal(targets.bins, top[targets.ranks])
    for rank, key, offset, count in zip(
        targets.ranks, targets.bins, targets.offsets, targets.bin_counts, strict=True
    ):
        in_bin = np.flatnonzero(top == key)
        assert count == in_bin.size
        assert offset == rank - in_bin[0]
    with pytest.raises(EmptyDataError):
        targets_for(Histogram.empty("float32"), 50)


def test_coarse_histogram_drops_non_positive_and_non_finite():
    a = np.array([0.0, -0.0, -1.0, np.nan, -np.nan, np.inf, -np.inf, 1.0, 1.0, 5e-324, 2.0])
    hist = coarse_histogram(a)
    assert hist.dtype == "float64"
    assert hist.n == 4
    assert hist.keys.dtype == np.uint16 and hist.counts.dtype == np.int64
    assert coarse_histogram(a.astype(np.float32)).n == 3  # 5e-324 underflows to 0
    assert coarse_histogram(a, dtype="float32").dtype == "float32"
    assert coarse_histogram(np.empty((0, 3), np.float32)) == Histogram.empty("float32")


finite_arrays = st.sampled_from([np.float32, np.float64]).flatmap(
    lambda dt: hnp.arrays(
        dt,
        st.integers(0, 60),
        elements=st.floats(width=32 if dt == np.float32 else 64, allow_nan=True),
    )
)


@settings(max_examples=80, deadline=None)
@given(a=finite_arrays)
def test_histogram_json_round_trip(a):
    hist = coarse_histogram(a)
    text = json.dumps(hist.to_json())
    back = Histogram.from_json(json.loads(text))
    assert back == hist
    assert back.keys.dtype == np.uint16 and back.counts.dtype == np.int64
    assert Histogram.from_json(text) == hist
    payload = hist.to_json()
    assert all(type(k) is int for k in payload["keys"] + payload["counts"])
    assert hist.n == pooled_positive_finite([a]).size


@settings(max_examples=60, deadline=None)
@given(parts=st.lists(hnp.arrays(np.float64, st.integers(0, 40)), min_size=3, max_size=3))
def test_histogram_merge_associative_and_exact(parts):
    a, b, c = (coarse_histogram(p) for p in parts)
    assert a.merge(b).merge(c) == a.merge(b.merge(c))
    assert a.merge(b) == b.merge(a)
    assert Histogram.merge_all([a, b, c]) == coarse_histogram(np.concatenate(parts))
    assert a.merge(Histogram.empty("float64")) == a


def test_histogram_validation():
    with pytest.raises(ValueError):
        Histogram.empty("float32").merge(Histogram.empty("float64"))
    with pytest.raises(ValueError):
        Histogram.merge_all([])
    with pytest.raises(ValueError):
        Histogram.from_json({"dtype": "float32", "keys": [3, 2], "counts": [1, 1]})
    with pytest.raises(ValueError):
        Histogram.from_json({"dtype": "float32", "keys": [0x7F80], "counts": [1]})  # inf
    with pytest.raises(ValueError):
        Histogram.from_json({"dtype": "float32", "keys": [1], "counts": [-1]})
    with pytest.raises(ValueError):
        Histogram.from_json({"keys": [1], "counts": [1]})
    with pytest.raises(TypeError):
        Histogram.empty("float16")


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "sources",
    [
        [],
        [np.empty(0, np.float32)],
        [np.array([0.0, -0.0, -3.0, np.nan, np.inf, -np.inf])],
        [da.zeros((10, 10), chunks=5), as_delayed(np.full(4, np.nan))],
    ],
    ids=["no-source", "size-0", "no-positive-finite", "dask-and-delayed"],
)
def test_empty_raises(sources, sync_scheduler):
    with pytest.raises(EmptyDataError, match="positive finite"):
        exact_percentile(sources, 50)
    assert issubclass(EmptyDataError, ValueError)


@pytest.mark.parametrize(
    "q", [-1, 100.5, np.nan, [50, 101], [-0.1], "abc", 1j, np.zeros((2, 2, 2)), [None]]
)
def test_invalid_q(q, sync_scheduler):
    loaded = []

    def load():
        loaded.append(1)
        return np.ones(3)

    with pytest.raises(ValueError):
        exact_percentile([dask.delayed(load)()], q)
    assert not loaded  # q is validated before any work
    with pytest.raises(ValueError):
        targets_for(coarse_histogram(np.ones(3)), q)


def test_invalid_options(sync_scheduler):
    with pytest.raises(ValueError):
        exact_percentile([np.ones(3)], 50, max_gather=-1)
    with pytest.raises(ValueError):
        exact_percentile([np.ones(3)], 50, fan_in=1)
    with pytest.raises(ValueError, match="aligned"):
        resolve_exact([np.ones(3)], coarse_histogram(np.ones(3)), 50, source_histograms=[])


# ------------------------------------------------------------ bounded memory


class _GuardedNumpy:
    """numpy, as seen by the quantiles module, whose joining functions refuse big joins."""

    JOINERS = ("concatenate", "concat", "hstack", "vstack", "stack", "append", "block")

    def __init__(self, budget):
        self.budget = budget
        self.largest = 0

    def __getattr__(self, name):
        attr = getattr(np, name)
        if name not in self.JOINERS:
            return attr

        def guarded(*args, **kwargs):
            result = attr(*args, **kwargs)
            self.largest = max(self.largest, np.size(result))
            if np.size(result) > self.budget:
                raise AssertionError(f"np.{name} joined {np.size(result)} values")
            return result

        return guarded


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_values_are_never_concatenated(monkeypatch, dtype, sync_scheduler):
    rng = np.random.default_rng(11)
    arrays = [rng.lognormal(0, 1, 50_000).astype(dtype) for _ in range(8)]  # narrow: big bins
    pooled = pooled_positive_finite(arrays)
    q = [0, 50, 95, 99.9, 100]
    expected = np.percentile(pooled, q)
    max_gather = 500
    guard = _GuardedNumpy(budget=2 * max_gather)
    monkeypatch.setattr(quantiles, "np", guard)
    result = exact_percentile(arrays, q, max_gather=max_gather)
    monkeypatch.undo()
    assert_bit_identical(result, expected)
    # the guard really sees the module's joins (so it would fail if someone pooled)
    assert guard.largest > 0
    with pytest.raises(AssertionError, match="joined"):
        monkeypatch.setattr(quantiles, "np", _GuardedNumpy(budget=10))
        try:
            exact_percentile(arrays, q, max_gather=max_gather)
        finally:
            monkeypatch.undo()


def _load_big(seed, size):
    rng = np.random.default_rng(seed)
    return rng.lognormal(0, 2, size)


@pytest.mark.parametrize("max_gather", [0, DEFAULT_MAX_GATHER])
def test_peak_client_memory_is_bounded(max_gather, sync_scheduler):
    """Tracing every allocation: far less than the pooled values are ever alive."""
    n_files, size = 40, 250_000  # 10 million float64 = 80 MB if pooled
    loaders = [dask.delayed(_load_big, pure=False)(seed, size) for seed in range(n_files)]
    pooled_bytes = n_files * size * 8
    # warm up on tiny data first: lazy imports must not count as data memory
    exact_percentile([dask.delayed(_load_big)(0, 100)], [50], max_gather=max_gather)
    tracemalloc.start()
    try:
        result = exact_percentile(loaders, [50, 99.9], max_gather=max_gather)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < pooled_bytes / 5, f"peak {peak / 1e6:.1f} MB"
    assert np.all(result > 0)
