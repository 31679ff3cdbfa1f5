#!/usr/bin/python3
"""hlm.py - reference reader and writer of the halflife model file (.hlm).

The byte layout is schemas/model.md; core/model*.c are the C side. This file
exists so a team that trains in another framework (PyTorch, JAX, ...) can
export a model halflife serves, and so the format is checked by a second,
independent implementation. Only the standard library and numpy are used.

Library:
    import hlm
    m = hlm.read("model.hlm")          # validates like the worker does
    m.e_in.shape, m.item_ids[:3], m.layers[0][0].shape, m.fingerprint
    hlm.write("copy.hlm", m)           # atomic: a temporary file, fsync, rename
    hlm.write("new.hlm", hlm.Model(dim=..., half_life_ms=[...], ...))

CLI (always /usr/bin/python3, which has numpy):
    schemas/hlm.py info MODEL              header, sections, fingerprint as JSON
    schemas/hlm.py verify MODEL            exit 0 if valid, else the reason
    schemas/hlm.py random OUT --items N --dim D [--heads H] [--hidden W] [--seed S]
"""

import argparse
import json
import math
import os
import struct
import sys
import tempfile
import zlib

import numpy as np

MAGIC = b"HLMODEL\0"
FORMAT_VERSION = 1
HEADER_SIZE = 512
ALIGN = 64
MAX_LAYERS = 4
MAX_HEADS = 8
MAX_DIM = 4096
MAX_WIDTH = 65536
MAX_ID_LEN = 256
F32_MAX = 3.4028234663852886e38
MAX_ABS = 256.0     # every float of e_in, the layers, e_out, bias (model.md)
TYPES = ("VIEW", "CLICK", "FAVORITE", "ADD_TO_CART", "PURCHASE", "RATE")

# Header: (name, struct format, offset); see schemas/model.md.
H_VERSION, H_CRC, H_FILE_SIZE, H_HEADER_SIZE = 8, 12, 16, 24
H_DIM, H_HEADS, H_ITEMS, H_LAYERS, H_LAYER_OUT = 28, 32, 36, 40, 44
H_RESERVED0, H_HALF_LIFE, H_TYPE_WEIGHT, H_N_TYPES = 60, 64, 128, 152
H_RESERVED1, H_VERSION_STR, H_SECTIONS = 156, 160, 224
SECTIONS = (["item_id_offsets", "item_id_bytes", "e_in"]
            + [f"layer_{k}[{l}]" for l in range(MAX_LAYERS) for k in "wb"]
            + ["e_out", "bias"])
H_END = H_SECTIONS + 16 * len(SECTIONS)


class HlmError(Exception):
    """A file that is not a valid .hlm, or parts that cannot be written."""


class Model:
    """Everything an .hlm holds. Arrays are float32; layers is a list of
    (W, b) with W of shape (out, in) and b of shape (out,); the first layer's
    input is n_heads * (dim + 1), the last layer's output is dim."""

    def __init__(self, dim, half_life_ms, type_weight, item_ids, e_in, layers,
                 e_out, bias, version=""):
        self.dim = int(dim)
        self.half_life_ms = [float(x) for x in half_life_ms]
        if isinstance(type_weight, dict):
            type_weight = [float(type_weight.get(t, 1.0)) for t in TYPES]
        self.type_weight = [float(x) for x in type_weight]
        self.item_ids = list(item_ids)
        self.e_in = e_in
        self.layers = list(layers)
        self.e_out = e_out
        self.bias = bias
        self.version = version
        self.fingerprint = None     # set by read() and write()
        self.crc32 = None

    @property
    def n_items(self):
        return len(self.item_ids)

    @property
    def n_heads(self):
        return len(self.half_life_ms)

    def input_dim(self):
        return self.n_heads * (self.dim + 1)


# ---- layout ----

def _align(x):
    return (x + ALIGN - 1) // ALIGN * ALIGN


def _layout(n_items, dim, n_heads, layer_out, id_bytes):
    """[(offset, size)] per section, and the file size."""
    secs = [(0, 0)] * len(SECTIONS)
    pos = HEADER_SIZE

    def place(i, size, align):
        nonlocal pos
        if align:
            pos = _align(pos)
        secs[i] = (pos, size)
        pos += size

    place(0, 8 * (n_items + 1), False)
    place(1, id_bytes, False)
    place(2, 4 * n_items * dim, True)
    fan_in = n_heads * (dim + 1)
    for l, out in enumerate(layer_out):
        place(3 + 2 * l, 4 * out * fan_in, True)
        place(4 + 2 * l, 4 * out, True)
        fan_in = out
    place(len(SECTIONS) - 2, 4 * n_items * dim, True)
    place(len(SECTIONS) - 1, 4 * n_items, True)
    return secs, pos


def fnv1a64(data):
    h = 1469598103934665603
    for b in data:
        h = ((h ^ b) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h


def _check_range(field, v, lo, hi):
    if not lo <= v <= hi:
        raise HlmError(f"field {field}: expected {lo}..{hi}, found {v}")


def _check_shape(dim, n_heads, n_items, layer_out, half_life_ms, type_weight):
    _check_range("dim", dim, 1, MAX_DIM)
    _check_range("n_heads", n_heads, 1, MAX_HEADS)
    _check_range("n_items", n_items, 1, 2**31 - 1)
    _check_range("n_layers", len(layer_out), 1, MAX_LAYERS)
    for out in layer_out:
        _check_range("layer_out", out, 1, MAX_WIDTH)
    if layer_out[-1] != dim:
        raise HlmError(f"field layer_out[{len(layer_out) - 1}]: expected dim {dim},"
                       f" found {layer_out[-1]}")
    for h, t in enumerate(half_life_ms):
        if not (math.isfinite(t) and t > 0):
            raise HlmError(f"field half_life_ms[{h}]: expected finite and > 0, found {t}")
        if not math.isfinite(math.log(2) / t):     # a denormal: the rate is inf
            raise HlmError(f"field half_life_ms[{h}]: {t:g} is too short, its rate ln 2 /"
                           f" half-life is not finite")
    # A negative weight makes a head's mass negative and s_h / max(m_h, eps)
    # explode; one beyond float32 would be written as inf.
    for name, w in zip(TYPES, type_weight):
        if not (math.isfinite(w) and w >= 0):
            raise HlmError(f"field type_weight[{name}]: expected finite and >= 0, found {w}")
        if w > F32_MAX:
            raise HlmError(f"field type_weight[{name}]: expected at most {F32_MAX:g}"
                           f" (float32), found {w}")


def _check_finite(name, a):
    """Finite and |value| <= MAX_ABS (why: HL_MODEL_MAX_ABS in core/model.h)."""
    flat = a.reshape(-1)
    bad = np.flatnonzero(~(np.abs(flat) <= MAX_ABS))
    if bad.size:
        i = int(bad[0])
        cols = a.shape[1] if a.ndim == 2 else a.shape[0]
        if not np.isfinite(flat[i]):
            raise HlmError(f"{name}[{i // cols}][{i % cols}] is {flat[i]}:"
                           " expected finite values")
        raise HlmError(f"{name}[{i // cols}][{i % cols}] is {float(flat[i]):g}: expected"
                       f" |value| <= {MAX_ABS:g} (larger values can overflow scores)")


def _check_ids(ids_bytes):
    seen = {}
    for r, b in enumerate(ids_bytes):
        if not 1 <= len(b) <= MAX_ID_LEN:
            raise HlmError(f"item id at row {r}: length {len(b)} outside 1..{MAX_ID_LEN}")
        try:
            b.decode("utf-8")           # lists publish ids as Avro strings
        except UnicodeDecodeError as e:
            raise HlmError(f"item id at row {r} is not valid UTF-8 (bad byte at {e.start}"
                           f" of {len(b)}; lists publish ids as Avro strings):"
                           " re-export the ids as UTF-8") from None
        if b in seen:
            raise HlmError(f"duplicate item id {b[:64].decode('utf-8', 'replace')!r}"
                           f" at rows {seen[b]} and {r}")
        seen[b] = r


# ---- read ----

def _u32(buf, off):
    return struct.unpack_from("<I", buf, off)[0]


def _u64(buf, off):
    return struct.unpack_from("<Q", buf, off)[0]


def _read_header(buf, path):
    if len(buf) < HEADER_SIZE:
        raise HlmError(f"truncated: {len(buf)} bytes, the header alone is {HEADER_SIZE}")
    if buf[:8] != MAGIC:
        raise HlmError(f"field magic: expected {MAGIC!r}, found {bytes(buf[:8])!r}"
                       " (not a .hlm file)")
    if _u32(buf, H_VERSION) != FORMAT_VERSION:
        raise HlmError(f"field format_version: expected {FORMAT_VERSION},"
                       f" found {_u32(buf, H_VERSION)}")
    if _u32(buf, H_HEADER_SIZE) != HEADER_SIZE:
        raise HlmError(f"field header_size: expected {HEADER_SIZE},"
                       f" found {_u32(buf, H_HEADER_SIZE)}")
    if _u64(buf, H_FILE_SIZE) != len(buf):
        raise HlmError(f"field file_size: header says {_u64(buf, H_FILE_SIZE)} bytes,"
                       f" file has {len(buf)} (truncated or appended to)")
    if _u32(buf, H_N_TYPES) != len(TYPES):
        raise HlmError(f"field n_types: expected {len(TYPES)}, found {_u32(buf, H_N_TYPES)}")
    for lo, hi in ((H_RESERVED0, H_RESERVED0 + 4), (H_RESERVED1, H_RESERVED1 + 4),
                   (H_END, HEADER_SIZE)):
        if any(buf[lo:hi]):
            raise HlmError(f"reserved header bytes {lo}..{hi}: expected 0")
    n_layers = _u32(buf, H_LAYERS)
    n_heads = _u32(buf, H_HEADS)
    _check_range("n_layers", n_layers, 1, MAX_LAYERS)
    _check_range("n_heads", n_heads, 1, MAX_HEADS)
    vers = bytes(buf[H_VERSION_STR:H_VERSION_STR + 64])
    if b"\0" not in vers:
        raise HlmError("field version: not NUL-terminated within 64 bytes")
    try:
        vers.split(b"\0", 1)[0].decode("utf-8")
    except UnicodeDecodeError:
        raise HlmError("field version: not valid UTF-8 (lists carry it as an Avro string);"
                       " write the version as UTF-8") from None
    hdr = dict(
        dim=_u32(buf, H_DIM), n_heads=n_heads, n_items=_u32(buf, H_ITEMS),
        layer_out=list(struct.unpack_from(f"<{n_layers}I", buf, H_LAYER_OUT)),
        half_life_ms=list(struct.unpack_from(f"<{n_heads}d", buf, H_HALF_LIFE)),
        type_weight=list(struct.unpack_from(f"<{len(TYPES)}f", buf, H_TYPE_WEIGHT)),
        version=vers.split(b"\0", 1)[0].decode("utf-8", "surrogateescape"),
        crc32=_u32(buf, H_CRC), file_size=len(buf),
        fingerprint=fnv1a64(bytes(buf[:HEADER_SIZE])),
        sections=[(_u64(buf, H_SECTIONS + 16 * s), _u64(buf, H_SECTIONS + 16 * s + 8))
                  for s in range(len(SECTIONS))])
    _check_shape(hdr["dim"], n_heads, hdr["n_items"], hdr["layer_out"],
                 hdr["half_life_ms"], hdr["type_weight"])
    if (any(buf[H_LAYER_OUT + 4 * n_layers:H_RESERVED0])
            or any(buf[H_HALF_LIFE + 8 * n_heads:H_TYPE_WEIGHT])
            or any(vers[vers.index(b"\0"):])):
        raise HlmError("unused header bytes: expected 0")
    return hdr


def _check_sections(hdr):
    n = hdr["n_items"]
    id_bytes = hdr["sections"][1][1]
    if not n <= id_bytes <= n * MAX_ID_LEN:
        raise HlmError(f"section item_id_bytes: size {id_bytes} outside {n}..{n * MAX_ID_LEN}")
    want, end = _layout(n, hdr["dim"], hdr["n_heads"], hdr["layer_out"], id_bytes)
    for name, w, f in zip(SECTIONS, want, hdr["sections"]):
        if w != f:
            raise HlmError(f"section {name}: expected offset {w[0]} size {w[1]},"
                           f" found offset {f[0]} size {f[1]}")
    if end != hdr["file_size"]:
        raise HlmError(f"sizes do not add up: the sections end at byte {end},"
                       f" file_size says {hdr['file_size']}")
    return want


def _check_padding(buf, secs):
    end = HEADER_SIZE
    for name, (off, size) in zip(SECTIONS, secs):
        if size == 0:
            continue
        if any(buf[end:off]):
            raise HlmError(f"padding before section {name}: expected 0")
        end = off + size


def _floats(buf, sec, shape):
    off, size = sec
    return np.frombuffer(buf, dtype="<f4", count=size // 4, offset=off).reshape(shape)


def parse(buf, path="<bytes>"):
    """A Model from the bytes of a file; HlmError naming what is wrong."""
    try:
        hdr = _read_header(buf, path)
        secs = _check_sections(hdr)
        crc = zlib.crc32(memoryview(buf)[16:])
        if crc != hdr["crc32"]:
            raise HlmError(f"field crc32: header says {hdr['crc32']:08x}, the file's bytes"
                           f" give {crc:08x} (damaged file)")
        _check_padding(buf, secs)
        return _build(buf, hdr, secs)
    except HlmError as e:
        raise HlmError(f"model {path}: {e}") from None


def _build(buf, hdr, secs):
    n, d = hdr["n_items"], hdr["dim"]
    off = np.frombuffer(buf, dtype="<u8", count=n + 1, offset=secs[0][0])
    lens = np.diff(off.astype(np.int64))
    if off[0] != 0 or off[n] != secs[1][1] or (lens < 1).any() or (lens > MAX_ID_LEN).any():
        bad = int(np.flatnonzero((lens < 1) | (lens > MAX_ID_LEN))[0]) if (
            (lens < 1).any() or (lens > MAX_ID_LEN).any()) else 0
        raise HlmError(f"item id at row {bad}: offsets give a length outside 1..{MAX_ID_LEN}"
                       " (or do not span the id bytes)")
    blob = bytes(buf[secs[1][0]:secs[1][0] + secs[1][1]])
    ids_b = [blob[off[r]:off[r + 1]] for r in range(n)]
    e_in = _floats(buf, secs[2], (n, d))
    layers, fan_in = [], hdr["n_heads"] * (d + 1)
    for l, out in enumerate(hdr["layer_out"]):
        layers.append((_floats(buf, secs[3 + 2 * l], (out, fan_in)),
                       _floats(buf, secs[4 + 2 * l], (out,))))
        fan_in = out
    e_out = _floats(buf, secs[-2], (n, d))
    bias = _floats(buf, secs[-1], (n,))
    _check_finite("e_in", e_in)
    for l, (w, b) in enumerate(layers):
        _check_finite(f"layer_w[{l}]", w)
        _check_finite(f"layer_b[{l}]", b)
    _check_finite("e_out", e_out)
    _check_finite("bias", bias.reshape(1, -1))
    _check_ids(ids_b)
    m = Model(d, hdr["half_life_ms"], hdr["type_weight"],
              [b.decode("utf-8", "surrogateescape") for b in ids_b],
              e_in, layers, e_out, bias, hdr["version"])
    m.fingerprint, m.crc32 = hdr["fingerprint"], hdr["crc32"]
    m.header = hdr
    return m


def read(path):
    """Reads and validates path; returns a Model whose arrays are read-only
    views of the file's bytes. Raises HlmError naming what is wrong."""
    with open(path, "rb") as f:
        buf = f.read()
    return parse(buf, path)


# ---- write ----

def _id_bytes(i):
    return i if isinstance(i, bytes) else str(i).encode("utf-8", "surrogateescape")


def _f32(name, a, shape):
    a = np.ascontiguousarray(a, dtype="<f4")
    if a.shape != shape:
        raise HlmError(f"{name}: expected shape {shape}, found {a.shape}")
    _check_finite(name, a if a.ndim == 2 else a.reshape(1, -1))
    return a


def _parts(m):
    """Checked little-endian arrays in file order, and the header fields."""
    n, d = m.n_items, m.dim
    layer_out = [int(np.shape(w)[0]) for w, _ in m.layers]
    if len(m.type_weight) != len(TYPES):
        raise HlmError(f"type_weight: expected {len(TYPES)} values, found {len(m.type_weight)}")
    _check_shape(d, m.n_heads, n, layer_out, m.half_life_ms, m.type_weight)
    ids = [_id_bytes(i) for i in m.item_ids]
    _check_ids(ids)
    arrays = [_f32("e_in", m.e_in, (n, d))]
    fan_in = m.input_dim()
    for l, (w, b) in enumerate(m.layers):
        arrays.append(_f32(f"layer_w[{l}]", w, (layer_out[l], fan_in)))
        arrays.append(_f32(f"layer_b[{l}]", b, (layer_out[l],)))
        fan_in = layer_out[l]
    arrays.append(_f32("e_out", m.e_out, (n, d)))
    arrays.append(_f32("bias", m.bias, (n,)))
    version = m.version.encode("utf-8", "surrogateescape")
    if len(version) > 63 or b"\0" in version:
        raise HlmError("version: at most 63 bytes, no NUL")
    try:
        version.decode("utf-8")
    except UnicodeDecodeError:
        raise HlmError("version: not valid UTF-8 (lists carry it as an Avro string)") from None
    return ids, arrays, layer_out, version


def encode(m):
    """The bytes of m as an .hlm file (pieces, to be joined or streamed),
    with m.fingerprint and m.crc32 set."""
    ids, arrays, layer_out, version = _parts(m)
    offsets = np.zeros(m.n_items + 1, dtype="<u8")
    offsets[1:] = np.cumsum([len(b) for b in ids])
    secs, file_size = _layout(m.n_items, m.dim, m.n_heads, layer_out, int(offsets[-1]))
    hdr = bytearray(HEADER_SIZE)
    hdr[:8] = MAGIC
    struct.pack_into("<IIQIIIII", hdr, H_VERSION, FORMAT_VERSION, 0, file_size,
                     HEADER_SIZE, m.dim, m.n_heads, m.n_items, len(layer_out))
    struct.pack_into(f"<{len(layer_out)}I", hdr, H_LAYER_OUT, *layer_out)
    struct.pack_into(f"<{m.n_heads}d", hdr, H_HALF_LIFE, *m.half_life_ms)
    struct.pack_into(f"<{len(TYPES)}fI", hdr, H_TYPE_WEIGHT, *m.type_weight, len(TYPES))
    hdr[H_VERSION_STR:H_VERSION_STR + len(version)] = version
    for s, (off, size) in enumerate(secs):
        struct.pack_into("<QQ", hdr, H_SECTIONS + 16 * s, off, size)
    pieces, pos = [offsets.tobytes(), b"".join(ids)], HEADER_SIZE + 8 * (m.n_items + 1)
    pos += len(pieces[1])
    present = [2] + list(range(3, 3 + 2 * len(layer_out))) + [len(SECTIONS) - 2, len(SECTIONS) - 1]
    for s, a in zip(present, arrays):
        pieces.append(bytes(secs[s][0] - pos))
        pieces.append(memoryview(a).cast("B"))
        pos = secs[s][0] + secs[s][1]
    assert pos == file_size
    crc = zlib.crc32(memoryview(hdr)[16:])
    for p in pieces:
        crc = zlib.crc32(p, crc)
    struct.pack_into("<I", hdr, H_CRC, crc)
    m.crc32, m.fingerprint = crc, fnv1a64(bytes(hdr))
    return [bytes(hdr)] + pieces


def write(path, m):
    """Writes Model m to path atomically (a temporary file of its own beside
    path, fsync, rename, fsync of the directory), as hl_model_write does: two
    writers of one path each publish a whole file. Raises HlmError for parts
    the worker would refuse."""
    pieces = encode(m)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".tmp.",
                               dir=os.path.dirname(os.path.abspath(path)))
    os.fchmod(fd, 0o644)                # mkstemp's 0600: a worker may be another user
    try:
        with os.fdopen(fd, "wb") as f:
            for p in pieces:
                f.write(p)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dfd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def random_model(n_items, dim, n_heads=3, hidden=(), seed=0, version=None):
    """A model of random weights (tests, demos, benchmarks)."""
    rng = np.random.default_rng(seed)
    half_life = [3600e3, 86400e3, 30 * 86400e3, 7 * 86400e3, 600e3, 365 * 86400e3,
                 60e3, 3 * 3600e3][:n_heads]
    layers, fan_in = [], n_heads * (dim + 1)
    for out in list(hidden) + [dim]:
        layers.append((rng.standard_normal((out, fan_in), dtype=np.float32) / np.sqrt(fan_in),
                       rng.standard_normal(out, dtype=np.float32) * 0.01))
        fan_in = out
    return Model(dim, half_life, [1.0, 2.0, 4.0, 6.0, 10.0, 1.0],
                 [f"item-{i}" for i in range(n_items)],
                 rng.standard_normal((n_items, dim), dtype=np.float32) * 0.1, layers,
                 rng.standard_normal((n_items, dim), dtype=np.float32) * 0.1,
                 rng.standard_normal(n_items, dtype=np.float32) * 0.01,
                 version or f"random-{n_items}x{dim}-seed{seed}")


# ---- CLI ----

def info(m):
    h = m.header
    return {
        "format_version": FORMAT_VERSION, "file_size": h["file_size"],
        "dim": m.dim, "n_heads": m.n_heads, "half_life_ms": m.half_life_ms,
        "type_weight": dict(zip(TYPES, m.type_weight)), "n_items": m.n_items,
        "n_layers": len(m.layers),
        "layers": [{"in": int(w.shape[1]), "out": int(w.shape[0])} for w, _ in m.layers],
        "version": m.version, "crc32": f"{m.crc32:08x}", "fingerprint": f"{m.fingerprint:016x}",
        "sections": {name: {"offset": o, "size": s}
                     for name, (o, s) in zip(SECTIONS, h["sections"]) if s or o},
        "first_item_ids": m.item_ids[:5],
    }


def main(argv=None):
    ap = argparse.ArgumentParser(prog="hlm.py", description="read, check and write .hlm model files")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="print the header as JSON").add_argument("model")
    sub.add_parser("verify", help="exit 0 if the file is valid").add_argument("model")
    r = sub.add_parser("random", help="write a model of random weights")
    r.add_argument("out")
    r.add_argument("--items", type=int, required=True)
    r.add_argument("--dim", type=int, default=64)
    r.add_argument("--heads", type=int, default=3)
    r.add_argument("--hidden", type=int, action="append", default=[])
    r.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    try:
        if a.cmd == "random":
            m = random_model(a.items, a.dim, a.heads, a.hidden, a.seed)
            write(a.out, m)
            print(json.dumps({"out": a.out, "fingerprint": f"{m.fingerprint:016x}"}))
            return 0
        m = read(a.model)
        if a.cmd == "info":
            print(json.dumps(info(m), indent=2))
        else:
            print(f"ok {a.model} fingerprint {m.fingerprint:016x}")
        return 0
    except (HlmError, OSError) as e:
        print(f"hlm.py: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
