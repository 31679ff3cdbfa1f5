#!/usr/bin/python3
"""test_model_cmd.py - `halflife model inspect` and `halflife model compare`
against an independent implementation.

Models are written by schemas/hlm.py (Python, numpy). B keeps most of A's
items with vectors A's times a random matrix plus noise, so the map a swap
fits leaves a residual numpy can compute on its own: lstsq over the items
both know, ||E_a M - E_b|| / ||E_b|| in float64. compare must print that
residual (to float32's precision), the shared items and their share of
A's, and gate on --max-residual / --min-shared-ratio (defaults: the
HalflifeModelSwapLossy alert's 0.6 and 0.5) through its exit status and a
sentence on stderr. inspect must print the header hlm.py reads. Damaged
files and bad arguments get exit status 1 and 2 with a message.

Run: HL_HALFLIFE=build/halflife /usr/bin/python3 tests/integration/test_model_cmd.py
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

TOP = os.environ.get("HL_TOP") or os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
HALFLIFE = os.environ.get("HL_HALFLIFE") or os.path.join(TOP, "build", "halflife")
sys.path.insert(0, os.path.join(TOP, "schemas"))
import hlm  # noqa: E402

failed = 0


def check(name, ok, why):
    global failed
    print(("PASS" if ok else "FAIL") + " model_cmd." + name + ("" if ok else ": " + why))
    failed += not ok
    sys.stdout.flush()


def run(*args):
    p = subprocess.run([HALFLIFE, "model"] + list(args), capture_output=True, text=True,
                       timeout=120)
    out = None
    if p.stdout.strip().startswith("{"):
        out = json.loads(p.stdout)
    return p.returncode, out, p.stderr


def derived(a, keep, extra, dim, noise, seed, half_life_ms=None):
    """A model knowing A's first `keep` items (vectors A's times a random
    (A.dim, dim) matrix plus noise) and `extra` new ones."""
    rng = np.random.default_rng(seed)
    r = rng.standard_normal((a.dim, dim)).astype(np.float32) / np.sqrt(a.dim)
    shared = a.e_in[:keep] @ r
    e_in = np.vstack([shared + noise * rng.standard_normal(shared.shape) * shared.std(),
                      rng.standard_normal((extra, dim)) * 0.1]).astype(np.float32)
    b = hlm.random_model(keep + extra, dim, n_heads=len(half_life_ms or a.half_life_ms),
                         seed=seed + 1, version=f"derived-{seed}")
    b.half_life_ms = list(half_life_ms or a.half_life_ms)
    b.item_ids = a.item_ids[:keep] + [f"new-{i}" for i in range(extra)]
    b.e_in = e_in
    return b


def numpy_fit(a, b):
    """(shared items, residual) of the least-squares map from a's e_in to
    b's over the items both know, in float64."""
    rows_b = {i: k for k, i in enumerate(b.item_ids)}
    pairs = [(k, rows_b[i]) for k, i in enumerate(a.item_ids) if i in rows_b]
    xa = a.e_in[[p[0] for p in pairs]].astype(np.float64)
    xb = b.e_in[[p[1] for p in pairs]].astype(np.float64)
    m, *_ = np.linalg.lstsq(xa, xb, rcond=None)
    return len(pairs), float(np.linalg.norm(xa @ m - xb) / np.linalg.norm(xb))


def compare_case(name, pa, pb, a, b, want_ok, args=(), stderr_has=None, same_shape=True):
    rc, out, err = run("compare", pa, pb, *args)
    shared, res = numpy_fit(a, b)
    ok = (out is not None and rc == (0 if want_ok else 1) and out["ok"] is want_ok and
          out["shared_items"] == shared and abs(out["shared_ratio"] - shared / a.n_items) < 1e-5
          and abs(out["residual"] - res) < 2e-3 and out["same_shape"] is same_shape and
          out["from"]["fingerprint"] == "%016x" % a.fingerprint and
          out["to"]["fingerprint"] == "%016x" % b.fingerprint and
          (stderr_has is None or stderr_has in err))
    check(name, ok, "exit %s, printed %s, stderr %r; numpy: shared %d, residual %.6f"
          % (rc, out and {k: out[k] for k in out if k not in ("from", "to")}, err.strip(),
             shared, res))


def body(tmp):
    a = hlm.random_model(300, 8, seed=1, version="model-a")
    pa = os.path.join(tmp, "a.hlm")
    hlm.write(pa, a)
    rc, out, err = run("inspect", pa)
    check("inspect_header", rc == 0 and out is not None and out["version"] == "model-a" and
          out["fingerprint"] == "%016x" % a.fingerprint and out["dim"] == 8 and
          out["n_heads"] == 3 and out["half_life_ms"] == a.half_life_ms and
          out["items"] == 300 and out["type_weight"] == a.type_weight,
          "exit %s, %s, stderr %r" % (rc, out, err))

    close = derived(a, 240, 60, 8, 0.2, 11)             # a retrain of the same catalogue
    pc = os.path.join(tmp, "close.hlm")
    hlm.write(pc, close)
    compare_case("close_model_ok", pa, pc, a, close, True)
    compare_case("max_residual_gates", pa, pc, a, close, False, ("--max-residual", "0.05"),
                 "--max-residual 0.05")

    other = derived(a, 100, 200, 8, 0.2, 12)             # a third of A's items
    po = os.path.join(tmp, "other.hlm")
    hlm.write(po, other)
    compare_case("shared_ratio_gates", pa, po, a, other, False, (), "--min-shared-ratio 0.5")
    compare_case("shared_ratio_lowered", pa, po, a, other, True, ("--min-shared-ratio", "0.3"))

    unrelated = derived(a, 300, 0, 8, 50.0, 13)          # noise: the map carries nothing
    pu = os.path.join(tmp, "unrelated.hlm")
    hlm.write(pu, unrelated)
    compare_case("unrelated_refused", pa, pu, a, unrelated, False, (), "Was NEW trained with --init")

    reshaped = derived(a, 280, 20, 6, 0.2, 14, [7200e3, 10 * 86400e3])
    pr = os.path.join(tmp, "reshaped.hlm")
    hlm.write(pr, reshaped)
    compare_case("other_shape", pa, pr, a, reshaped, True, same_shape=False)

    raw = bytearray(open(pc, "rb").read())
    raw[len(raw) // 2] ^= 0x40
    pd = os.path.join(tmp, "damaged.hlm")
    open(pd, "wb").write(raw)
    for args, name in ((("inspect", pd), "inspect_damaged"), (("compare", pa, pd), "compare_damaged"),
                       (("inspect", os.path.join(tmp, "missing.hlm")), "inspect_missing")):
        rc, out, err = run(*args)
        check(name, rc == 1 and out is None and args[-1] in err,
              "exit %s, stdout %s, stderr %r" % (rc, out, err))

    bad_args = ((), ("compare", pa), ("inspect",), ("frobnicate", pa),
                ("compare", pa, pc, "--max-residual", "abc"),
                ("compare", pa, pc, "--min-shared-ratio", "2"),
                ("compare", pa, pc, "--bogus", "1"))
    for n, args in enumerate(bad_args):
        rc, out, err = run(*args)
        check("usage_error_%d" % n, rc == 2 and out is None and
              ("usage" in err or "halflife model" in err),
              "args %s: exit %s, stderr %r" % (args, rc, err))
    for args in (("--help",), ("inspect", "--help"), ("compare", pa, "-h"),
                 ("compare", pa, pc, "--help")):
        p = subprocess.run([HALFLIFE, "model"] + list(args), capture_output=True, text=True)
        check("help_" + "_".join(x.strip("-") for x in args if not x.endswith(".hlm")),
              p.returncode == 0 and "compare OLD NEW" in p.stdout,
              "args %s: exit %s, stdout %r" % (args, p.returncode, p.stdout[:200]))


def main():
    if not os.access(HALFLIFE, os.X_OK):
        print(f"SKIP model_cmd: {HALFLIFE} not built")
        return 0
    with tempfile.TemporaryDirectory(prefix="hl_model_cmd_") as tmp:
        body(tmp)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
