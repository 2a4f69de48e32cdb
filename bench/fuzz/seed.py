#!/usr/bin/env python3
"""Writes the seed corpus of each fuzz target under bench/fuzz/corpus/<target>/: a few small,
valid inputs of each format (the fuzzers mutate from there). Run by bench/fuzz.sh before the
first run; the corpus is committed, minimized, with what the fuzzers added."""
import gzip
import io
import os
import struct
import sys
import tarfile

from PIL import Image

ROOT = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(ROOT))


def put(target, name, data):
    d = os.path.join(ROOT, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def idx(dims, data, code=0x08):
    return bytes([0, 0, code, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + bytes(data)


# IDX: labels, images, and a gzipped file.
put("idx", "labels", idx([3], [1, 2, 3]))
put("idx", "images", idx([2, 2, 2], range(8)))
put("idx", "gz", gzip.compress(idx([2], [7, 9])))

# CIFAR: one batch member (CIFAR-10: 1 label byte + 3072 pixels), and a tiny archive.
record = lambda label: bytes([label]) + bytes(range(256)) * 12
batch = record(3) + record(9)
put("cifar", "batch10", b"\x00" + batch)
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w:gz") as tar:
    for name, data in [("cifar-10-batches-bin/data_batch_1.bin", batch),
                       ("cifar-10-batches-bin/test_batch.bin", record(1)),
                       ("cifar-10-batches-bin/batches.meta.txt", b"airplane\nautomobile\n")]:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
put("cifar", "archive10", b"\x00" + buf.getvalue())

# Images: a PNG and a JPEG, RGB and gray, decoded as is and resized.
for fmt, mode, pick in [("PNG", "RGB", 0), ("PNG", "L", 3), ("JPEG", "RGB", 2)]:
    out = io.BytesIO()
    Image.new(mode, (5, 4), 120).save(out, fmt)
    put("image", f"{fmt.lower()}-{mode}", bytes([pick]) + out.getvalue())

# Job YAML: the shipped job files.
for name in ["synth-digits.yaml", "mnist.yaml", "cifar10.yaml"]:
    with open(os.path.join(REPO, "configs", name), "rb") as f:
        put("job_yaml", name, f.read())

# A manifest as the scanner writes it (the root need not match: the check is exercised).
put("manifest", "two-files", b'{"root":"ab","files":[{"path":"cat/1.png","sha256":"00","size":3,'
    b'"class":"cat","split":"train"},{"path":"dog/2.png","sha256":"11","size":4,"class":"dog",'
    b'"split":"test"}],"classes":{"cat":1,"dog":1},"splits":{"train":1,"test":1},'
    b'"test_pct":20,"validation_pct":10}')


# Wire: protobuf by hand (tag, wire type, value).
def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out


def field(num, value):
    if isinstance(value, int):
        return varint(num << 3) + varint(value)
    return varint(num << 3 | 2) + varint(len(value)) + value


device = field(1, 1) + field(3, b"cpu") + field(5, 4)
put("wire", "register", field(1, b"w1") + field(2, b"host") + field(3, device) + field(4, 1) + field(5, b"0.1.0"))
put("wire", "complete", field(1, b"w1") + field(2, b"s") + field(3, b"t") + field(4, 1) + field(6, b"boom") + field(8, 1))
spec = field(1, b"job") + field(2, b"synth-digits") + field(8, 3)
put("wire", "submit", field(2, spec))
print("seeds written under", os.path.join(ROOT, "corpus"), file=sys.stderr)
