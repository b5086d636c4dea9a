"""Our streaming SafeTensors writer and the shared reader against the official library, and a fuzzed parser."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.numpy import save_file

from gptoss_metal.architecture import CheckpointError, SafetensorsFile, TensorSpec
from gptoss_metal.converters.errors import ConversionError
from gptoss_metal.converters.safetensors_io import ShardedWriter, collect_tensors, read_range


def _write_plan(tmp_path, arrays: dict[str, np.ndarray], max_shard: int) -> list:
    dt = {np.dtype("uint8"): "U8", np.dtype("uint32"): "U32", np.dtype("float32"): "F32"}
    specs = [TensorSpec(k, dt[v.dtype], v.shape) for k, v in arrays.items()]
    w = ShardedWriter(tmp_path, specs, max_shard_bytes=max_shard)
    # write in reverse order and in two halves each, to exercise random-order pwrite
    for k, v in reversed(list(arrays.items())):
        raw = v.tobytes()
        half = len(raw) // 2
        w.write(k, half, raw[half:])
        w.write(k, 0, raw[:half])
    return w.close()


def test_writer_output_reads_back_with_official_library(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "a": rng.integers(0, 255, (7, 5), dtype=np.uint8),
        "b": rng.standard_normal((3, 4, 2)).astype(np.float32),
        "c": rng.integers(0, 2**32 - 1, (9,), dtype=np.uint32),
        "empty": np.zeros((0, 3), dtype=np.float32),
    }
    files = _write_plan(tmp_path, arrays, max_shard=64)
    assert len(files) > 1  # the 64-byte cap forces several shards
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(arrays)
    for name, arr in arrays.items():
        with safe_open(tmp_path / index["weight_map"][name], framework="numpy") as f:
            np.testing.assert_array_equal(f.get_tensor(name), arr)
    stored = collect_tensors(tmp_path)
    for name, arr in arrays.items():
        assert read_range(stored[name], 0, arr.nbytes) == arr.tobytes()


def test_reader_accepts_official_library_files(tmp_path):
    arrays = {"x": np.arange(12, dtype=np.float32).reshape(3, 4), "y": np.ones(5, dtype=np.uint8)}
    save_file(arrays, tmp_path / "model.safetensors")
    sf = SafetensorsFile(tmp_path / "model.safetensors")
    assert sf.tensors["x"].spec == TensorSpec("x", "F32", (3, 4))
    assert read_range(sf.tensors["x"], 8, 8) == arrays["x"].tobytes()[8:16]


def test_incomplete_write_is_an_internal_error(tmp_path):
    w = ShardedWriter(tmp_path, [TensorSpec("a", "U8", (4,))])
    w.write("a", 0, b"\x00\x01")
    with pytest.raises(RuntimeError, match="not completely written"):
        w.close()


def _header_file(tmp_path, header: dict, data: bytes) -> object:
    raw = json.dumps(header).encode()
    p = tmp_path / "model.safetensors"
    p.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return p


@pytest.mark.parametrize(
    "header,data,message",
    [
        ({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}}, b"\0\0", "truncated"),
        ({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}}, b"\0" * 6, "unexpected bytes"),
        ({"a": {"dtype": "Q7", "shape": [4], "data_offsets": [0, 4]}}, b"\0" * 4, "unknown dtype"),
        ({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 3]}}, b"\0" * 4, "does not hold"),
        (
            {
                "a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                "b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]},
            },
            b"\0" * 6,
            "overlaps",
        ),
        ({"a": {"dtype": "U8", "shape": "x", "data_offsets": [0, 4]}}, b"\0" * 4, "corrupt"),
    ],
)
def test_corrupt_headers_name_the_problem(tmp_path, header, data, message):
    p = _header_file(tmp_path, header, data)
    with pytest.raises(CheckpointError, match=message):
        SafetensorsFile(p)


def test_garbage_and_short_files(tmp_path):
    p = tmp_path / "model.safetensors"
    p.write_bytes(b"abc")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        SafetensorsFile(p)
    p.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        SafetensorsFile(p)
    p.write_bytes(struct.pack("<Q", 4) + b"{{{{")
    with pytest.raises(CheckpointError, match="invalid JSON"):
        SafetensorsFile(p)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_parse_or_raise_a_checkpoint_error(tmp_path_factory, blob):
    p = tmp_path_factory.mktemp("fuzz") / "model.safetensors"
    p.write_bytes(blob)
    try:
        SafetensorsFile(p)
    except CheckpointError:
        pass


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.text(min_size=1, max_size=5),
        st.fixed_dictionaries(
            {
                "dtype": st.sampled_from(["U8", "F32", "BF16", "nope"]),
                "shape": st.lists(st.integers(-1, 4), max_size=3),
                "data_offsets": st.lists(st.integers(-2, 40), min_size=0, max_size=3),
            }
        ),
        max_size=4,
    ),
    st.integers(0, 48),
)
def test_structured_header_fuzz_never_crashes(tmp_path_factory, header, n_data):
    p = tmp_path_factory.mktemp("fuzz") / "model.safetensors"
    raw = json.dumps(header).encode()
    p.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * n_data)
    try:
        sf = SafetensorsFile(p)
    except CheckpointError:
        return
    # if it parsed, the tensors exactly tile the data area
    assert sum(t.spec.nbytes for t in sf.tensors.values()) == n_data


def test_the_converter_reports_the_shared_readers_errors_as_its_own(tmp_path):
    _header_file(tmp_path, {"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}}, b"\0\0")
    with pytest.raises(ConversionError, match="truncated"):
        collect_tensors(tmp_path)
