#!/usr/bin/python3
"""test_hlm.py - the .hlm format through two independent implementations.

schemas/hlm.py (Python, numpy) writes a model; the C reader (core/model.c,
driven by build/tests/test_model with HL_HLM_ROUNDTRIP_IN/OUT) opens it,
validates it and writes it again with hl_model_write; hlm.py reads that copy.
Arrays, ids, header fields and fingerprints must be identical both ways, and
damage must be refused by both sides with a message that names it.
"""
import os
import struct
import subprocess
import sys
import tempfile
import zlib

import numpy as np

TOP = os.environ.get("HL_TOP") or os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
BUILD = os.environ.get("HL_BUILD") or os.path.join(TOP, "build")
sys.path.insert(0, os.path.join(TOP, "schemas"))
import hlm  # noqa: E402

TEST_MODEL = os.path.join(BUILD, "tests", "test_model")
failed = 0


def case(fn):
    global failed
    try:
        why = fn()
    except AssertionError as e:
        print(f"FAIL test_hlm.{fn.__name__}: {e}")
        failed += 1
        return
    except Exception as e:  # a crash is a failure with its reason
        print(f"FAIL test_hlm.{fn.__name__}: {type(e).__name__}: {e}")
        failed += 1
        return
    if why:
        print(f"SKIP test_hlm.{fn.__name__}: {why}")
    else:
        print(f"PASS test_hlm.{fn.__name__}")
    sys.stdout.flush()


def c_roundtrip(src, dst):
    """(exit code, stdout) of the C reader+writer on src -> dst."""
    env = dict(os.environ, HL_HLM_ROUNDTRIP_IN=src, HL_HLM_ROUNDTRIP_OUT=dst)
    p = subprocess.run([TEST_MODEL], env=env, capture_output=True, text=True, timeout=60)
    return p.returncode, p.stdout + p.stderr


def odd_model(seed=1):
    """Shapes that catch layout mistakes: dim 7, 2 heads, 3 layers, ids of
    1..256 bytes including non-ASCII ones."""
    m = hlm.random_model(300, 7, n_heads=2, hidden=(5, 9), seed=seed, version="odd-é")
    m.item_ids = ([f"x{i}" for i in range(297)] + ["é" * 128, "z" * 256, "7"])
    m.type_weight = [0.5, 1.5, 3.0, 4.0, 8.0, 0.0]     # 0: the type is ignored, allowed
    return m


def assert_same(a, b):
    assert a.dim == b.dim and a.n_heads == b.n_heads, "dim/heads differ"
    assert a.half_life_ms == b.half_life_ms, f"half-lives {a.half_life_ms} vs {b.half_life_ms}"
    assert a.type_weight == b.type_weight, f"type weights {a.type_weight} vs {b.type_weight}"
    assert a.version == b.version, f"version {a.version!r} vs {b.version!r}"
    assert a.item_ids == b.item_ids, "item ids differ"
    for name in ("e_in", "e_out", "bias"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.shape == y.shape and np.array_equal(x, y), f"{name} differs"
    assert len(a.layers) == len(b.layers), "layer count differs"
    for l, ((wa, ba), (wb, bb)) in enumerate(zip(a.layers, b.layers)):
        assert np.array_equal(wa, wb) and np.array_equal(ba, bb), f"layer {l} differs"


def need_binary():
    if not os.access(TEST_MODEL, os.X_OK):
        return f"{TEST_MODEL} not built (make {os.path.relpath(TEST_MODEL, TOP)})"
    return None


def roundtrip_both_ways():
    if (why := need_binary()):
        return why
    with tempfile.TemporaryDirectory() as d:
        py, c = os.path.join(d, "py.hlm"), os.path.join(d, "c.hlm")
        m = odd_model()
        hlm.write(py, m)
        rc, out = c_roundtrip(py, c)
        assert rc == 0, f"C refused the Python-written model: {out.strip()}"
        assert f"fingerprint={m.fingerprint:016x}" in out, \
            f"C fingerprint differs: {out.strip()} vs {m.fingerprint:016x}"
        back = hlm.read(c)
        assert_same(m, back)
        assert_same(hlm.read(py), back)
        assert back.fingerprint == m.fingerprint, "fingerprint of the C copy differs"
        with open(py, "rb") as f1, open(c, "rb") as f2:
            assert f1.read() == f2.read(), "C and Python write different bytes"
        for name, (off, size) in zip(hlm.SECTIONS[2:], back.header["sections"][2:]):
            assert off % 64 == 0, f"section {name} at {off}: not 64-byte aligned"


def random_shapes():
    """Several random shapes through C and back."""
    if (why := need_binary()):
        return why
    rng = np.random.default_rng(7)
    with tempfile.TemporaryDirectory() as d:
        for k in range(5):
            n, dim = int(rng.integers(1, 2000)), int(rng.integers(1, 70))
            heads = int(rng.integers(1, 9))
            hidden = [int(x) for x in rng.integers(1, 100, size=int(rng.integers(0, 4)))]
            m = hlm.random_model(n, dim, heads, hidden, seed=k)
            py, c = os.path.join(d, f"p{k}.hlm"), os.path.join(d, f"c{k}.hlm")
            hlm.write(py, m)
            rc, out = c_roundtrip(py, c)
            assert rc == 0, f"shape {n}x{dim} heads {heads} hidden {hidden}: {out.strip()}"
            assert_same(m, hlm.read(c))


def patched(src, dst, edit, fix_crc=True):
    b = bytearray(open(src, "rb").read())
    edit(b)
    if fix_crc:
        struct.pack_into("<I", b, 12, zlib.crc32(memoryview(b)[16:]))
    open(dst, "wb").write(b)


def damage_refused_by_both():
    if (why := need_binary()):
        return why
    with tempfile.TemporaryDirectory() as d:
        good = os.path.join(d, "good.hlm")
        m = hlm.random_model(50, 8, seed=3)
        hlm.write(good, m)
        e_out_off = struct.unpack_from("<Q", open(good, "rb").read(), 224 + 16 * 11)[0]
        id_bytes_off = struct.unpack_from("<Q", open(good, "rb").read(), 224 + 16 * 1)[0]

        def nan(b):
            struct.pack_into("<f", b, e_out_off + 4 * (2 * 8 + 5), float("nan"))

        def dup(b):          # "item-1" -> "item-0" (ids are item-0, item-1, ...)
            b[id_bytes_off + 11] = ord("0")

        cases = [
            ("magic", lambda b: b.__setitem__(0, ord("X")), False, "field magic"),
            ("version", lambda b: struct.pack_into("<I", b, 8, 9), False,
             "field format_version: expected 1, found 9"),
            ("dim", lambda b: struct.pack_into("<I", b, 28, 9), False, "expected dim 9, found 8"),
            ("crc", lambda b: b.__setitem__(len(b) - 1, b[-1] ^ 1), False, "field crc32"),
            ("nan", nan, True, "e_out[2][5] is nan"),
            ("dup", dup, True, "duplicate item id 'item-0' at rows 0 and 1"),
            # A negative type weight (issue 16): masses go negative, scores explode.
            ("neg_weight", lambda b: struct.pack_into("<f", b, 128, -5.0), True,
             "field type_weight[VIEW]: expected finite and >= 0, found -5"),
            ("nan_half_life", lambda b: struct.pack_into("<d", b, 64 + 8, float("nan")), True,
             "field half_life_ms[1]: expected finite and > 0, found nan"),
            # lists publish ids and the version as Avro strings: UTF-8 only
            ("latin1_id", lambda b: b.__setitem__(id_bytes_off + 11, 0xe9), True,
             "item id at row 1 is not valid UTF-8 (bad byte at 5 of 6"),
            ("latin1_version", lambda b: b.__setitem__(160, 0xff), True,
             "field version: not valid UTF-8"),
            ("denormal_half_life", lambda b: struct.pack_into("<d", b, 64 + 16, 1e-310), True,
             "field half_life_ms[2]: 1e-310 is too short, its rate ln 2 / half-life is not finite"),
        ]
        for name, edit, fix, want in cases:
            p = os.path.join(d, f"{name}.hlm")
            patched(good, p, edit, fix)
            rc, out = c_roundtrip(p, os.path.join(d, "out.hlm"))
            c_want = want.replace("'", '"')
            assert rc != 0 and c_want in out, f"{name}: C said {out.strip()!r}, want {c_want!r}"
            try:
                hlm.read(p)
                raise AssertionError(f"{name}: hlm.py accepted a damaged file")
            except hlm.HlmError as e:
                assert want in str(e), f"{name}: hlm.py said {e!r}, want {want!r}"
        trunc = os.path.join(d, "trunc.hlm")
        open(trunc, "wb").write(open(good, "rb").read()[:-4])
        rc, out = c_roundtrip(trunc, os.path.join(d, "out.hlm"))
        assert rc != 0 and "file has" in out, f"truncated: C said {out.strip()!r}"


def writer_refuses():
    m = odd_model()
    m.e_in = m.e_in.copy()
    m.e_in[3, 4] = np.inf
    # finite but beyond the bound both readers hold (core/model.h, HL_MODEL_MAX_ABS)
    h = odd_model()
    h.e_out = h.e_out.copy()
    h.e_out[2, 1] = -3e38
    for bad, want in ((m, "e_in[3][4] is inf"),
                      (h, "e_out[2][1] is -3e+38: expected |value| <= 256")):
        try:
            hlm.encode(bad)
            raise AssertionError("encode accepted " + want)
        except hlm.HlmError as e:
            assert want in str(e), str(e)
    h.e_out[2, 1] = -256.0       # at the bound: written
    hlm.encode(h)
    m = odd_model()
    m.item_ids[5] = m.item_ids[4]
    try:
        hlm.encode(m)
        raise AssertionError("encode accepted a duplicate id")
    except hlm.HlmError as e:
        assert "duplicate item id 'x4' at rows 4 and 5" in str(e), str(e)


def writer_refuses_bad_weights():
    """hlm.write refuses a negative, non-finite or float32-overflowing type
    weight and a half-life that is not finite and > 0, naming the field,
    and leaves no file; `hlm.py verify` says the same of a file holding one."""
    bad = [("type_weight", 0, -5.0, "field type_weight[VIEW]: expected finite and >= 0, found -5.0"),
           ("type_weight", 5, float("inf"), "field type_weight[RATE]: expected finite"),
           ("type_weight", 1, 1e39, "field type_weight[CLICK]: expected at most"),
           ("half_life_ms", 2, -1.0, "field half_life_ms[2]: expected finite and > 0"),
           ("half_life_ms", 0, float("nan"), "field half_life_ms[0]: expected finite and > 0")]
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "bad.hlm")
        for field, i, v, want in bad:
            m = hlm.random_model(20, 4, seed=5)
            getattr(m, field)[i] = v
            try:
                hlm.write(out, m)
                raise AssertionError(f"write accepted {field}[{i}] = {v}")
            except hlm.HlmError as e:
                assert want in str(e), f"{field}[{i}] = {v}: {e}"
            assert not os.path.exists(out) and not os.path.exists(out + ".tmp"), \
                f"{field}[{i}] = {v}: a file was left"
        good = os.path.join(d, "good.hlm")
        hlm.write(good, hlm.random_model(20, 4, seed=5))
        patched(good, out, lambda b: struct.pack_into("<f", b, 128, -5.0))
        r = subprocess.run(["/usr/bin/python3", os.path.join(TOP, "schemas", "hlm.py"),
                            "verify", out], capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and "field type_weight[VIEW]" in r.stderr, \
            f"verify: exit {r.returncode}, {r.stderr.strip()!r}"


def cli_info():
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "m.hlm")
        r = subprocess.run(["/usr/bin/python3", os.path.join(TOP, "schemas", "hlm.py"),
                            "random", p, "--items", "40", "--dim", "4"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        r = subprocess.run(["/usr/bin/python3", os.path.join(TOP, "schemas", "hlm.py"),
                            "info", p], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        import json
        j = json.loads(r.stdout)
        assert j["n_items"] == 40 and j["dim"] == 4 and j["n_heads"] == 3, j
        assert j["fingerprint"] == f"{hlm.read(p).fingerprint:016x}", j


for c in (roundtrip_both_ways, random_shapes, damage_refused_by_both, writer_refuses,
          writer_refuses_bad_weights, cli_info):
    case(c)
sys.exit(1 if failed else 0)
