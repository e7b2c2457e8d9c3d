#!/usr/bin/env python3
"""Writes the seed corpus of the safetensors fuzz target (tests/fuzz/corpus/):
small valid files for the target's three descriptors (so that mutations
reach conversion and layer creation) and one file per kind of hostile
input. Standard library only; deterministic. Run from anywhere:

    python3 tests/fuzz/make_corpus.py
"""
import json
import os
import random
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus")
rng = random.Random(1234)


def encode(dtype, values):
    if dtype == "F32":
        return struct.pack("<%df" % len(values), *values)
    if dtype == "F16":
        return struct.pack("<%de" % len(values), *values)
    if dtype == "BF16":  # the top half of the binary32 (values chosen exact)
        return b"".join(struct.pack("<I", struct.unpack("<I", struct.pack("<f", v))[0])[2:] for v in values)
    if dtype == "I64":
        return struct.pack("<%dq" % len(values), *[int(v) for v in values])
    raise ValueError(dtype)


def values(n):
    return [rng.randrange(-16, 17) / 16.0 for _ in range(n)]  # exact in F16 and BF16


def image(tensors, metadata=None, raw_header=None, length=None):
    """tensors: list of (name, dtype, shape, values); offsets laid out in order."""
    header, data = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, vals in tensors:
        blob = encode(dtype, vals)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(blob)]}
        data += blob
    text = raw_header if raw_header is not None else json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the padding safetensors writes
    return struct.pack("<Q", len(text) if length is None else length) + text + data


def std_layer(dtype="F32", five_d=False, routing_bias=True, bias=True, routing=True):
    """Cin 2, Cout 3, kernel 1x2, E 2 (descriptors 0 and 1 of the target)."""
    t = [("conv.weight", dtype, [2, 3, 2, 1, 2] if five_d else [2, 12], values(24))]
    if bias:
        t.append(("conv.bias", dtype, [2, 3], values(6)))
    if routing:
        t.append(("routing_fn.weight", dtype, [2, 2], values(4)))
        if routing_bias:
            t.append(("routing_fn.bias", dtype, [2], values(2)))
    return t


def dw_layer(dtype="F32", five_d=False):
    """Depthwise 3x3 on 4 channels, E 3 (descriptor 2 of the target)."""
    return [("conv.weight", dtype, [3, 4, 1, 3, 3] if five_d else [3, 36], values(108)),
            ("conv.bias", dtype, [3, 4], values(12)),
            ("routing_fn.weight", dtype, [3, 4], values(12)),
            ("routing_fn.bias", dtype, [3], values(3))]


def main():
    os.makedirs(OUT, exist_ok=True)
    seeds = {
        "valid_std_f32": image(std_layer(), metadata={"format": "pt"}),
        "valid_std_f16": image(std_layer("F16")),
        "valid_std_bf16": image(std_layer("BF16")),
        "valid_std_5d": image(std_layer(five_d=True)),
        "valid_std_no_routing_bias": image(std_layer(routing_bias=False)),
        "valid_external_no_bias": image(std_layer(bias=False, routing=False)),
        "valid_dw_f32": image(dw_layer()),
        "valid_dw_5d_bf16": image(dw_layer("BF16", five_d=True)),
        "valid_extra_tensors": image(std_layer() + [("step", "I64", [], [7]), ("empty", "F32", [0, 3], [])]),
    }
    good = image(std_layer())
    seeds["bad_truncated_data"] = good[:-5]
    seeds["bad_truncated_length"] = good[:5]
    seeds["bad_length_beyond_file"] = struct.pack("<Q", 1 << 40) + good[8:]
    seeds["bad_empty_header"] = struct.pack("<Q", 0) + b"\0" * 16
    seeds["bad_not_json"] = image([], raw_header=b"{\"conv.weight\":[}")
    seeds["bad_overlap"] = image([], raw_header=json.dumps({
        "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
        "b": {"dtype": "F16", "shape": [4], "data_offsets": [12, 20]}}).encode()) + b"\0" * 20
    seeds["bad_duplicate"] = image([], raw_header=(
        b'{"conv.weight":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
        b'"conv.weight":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}')) + b"\0" * 8
    seeds["bad_utf8_name"] = image([], raw_header=(
        b'{"conv\xff.weight":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}')) + b"\0" * 4
    seeds["bad_dtype"] = image([], raw_header=b'{"w":{"dtype":"F33","shape":[1],"data_offsets":[0,4]}}') + b"\0" * 4
    seeds["bad_absurd_dims"] = image([], raw_header=(
        b'{"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,4]}}')) + b"\0" * 4
    seeds["bad_offsets_outside"] = image([], raw_header=(
        b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[64,68]}}')) + b"\0" * 4
    seeds["bad_byte_count"] = image([], raw_header=(
        b'{"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}}')) + b"\0" * 20
    seeds["bad_metadata_value"] = image(std_layer(), metadata={"format": 1})
    shape_mismatch = std_layer()
    shape_mismatch[0] = ("conv.weight", "F32", [3, 8], values(24))
    seeds["bad_shape_mismatch"] = image(shape_mismatch)
    seeds["bad_integer_weights"] = image([("conv.weight", "I64", [2, 12], [1] * 24)] + std_layer()[1:])
    for name, data in sorted(seeds.items()):
        with open(os.path.join(OUT, name + ".safetensors"), "wb") as f:
            f.write(data)
    print(f"{len(seeds)} seeds in {OUT}, largest {max(map(len, seeds.values()))} bytes")


if __name__ == "__main__":
    main()
