#!/usr/bin/env bash
# check_prefetch.sh - fail when a prefetch we wrote compiled to nothing.
#
# Usage: tests/check_prefetch.sh BUILD_DIR   (make check-prefetch)
# gcc 12 takes an out-of-line helper whose only effect is __builtin_prefetch
# for pure and deletes its calls, silently: migrate.o and qscore_scan.o held
# no prefetch instruction (core/hl.h, HL_PREFETCH_FN). So every object whose
# source prefetches must show at least one prefetch instruction in objdump:
# the .c files of core/ and worker/ that contain __builtin_prefetch, and
# those that call a helper defined in a header with one (rank_internal.h's
# prefetch_row). At least one per object: a file with two helpers, one
# dropped, still passes (the per-helper check below catches that one).
set -u
build=${1:?usage: tests/check_prefetch.sh BUILD_DIR}
cd "$(dirname "$0")/.." || exit 1
dirs="core core/train worker worker/cmd"

# Names of the functions in header $1 whose body holds a __builtin_prefetch:
# the last identifier before "(" on the latest line at column 0 that opens
# a definition (the style puts the name there, or on the line after the
# return type).
helpers_in() {
  awk '/^[A-Za-z_]/ && /\(/ && !/^#/ {
         s = $0; sub(/\(.*/, "", s); n = split(s, w, /[^A-Za-z_0-9]+/)
         while (n > 0 && w[n] == "") n--
         if (n > 0 && w[n] != "__attribute__") name = w[n] }
       /__builtin_prefetch/ && name != "" { print name }' "$1" | sort -u
}

srcs=$(for d in $dirs; do grep -l __builtin_prefetch "$d"/*.c 2>/dev/null; done)
for d in $dirs; do
  for h in $(grep -l __builtin_prefetch "$d"/*.h 2>/dev/null); do
    for fn in $(helpers_in "$h"); do
      srcs="$srcs $(grep -lE "\\b$fn\\(" $(for d2 in $dirs; do echo "$d2"/*.c; done) 2>/dev/null)"
    done
  done
done

bad=0 n=0
for src in $(printf '%s\n' $srcs | sort -u); do
  obj="$build/${src%.c}.o"
  n=$((n + 1))
  if [ ! -f "$obj" ]; then
    echo "check-prefetch: $src: no object $obj (build it first)"; bad=1; continue
  fi
  if ! objdump -d "$obj" | grep -qE '\bprefetch(t0|t1|t2|nta|w|wt1)\b'; then
    echo "check-prefetch: $src prefetches but $obj has no prefetch instruction:" \
         "a prefetch-only helper dropped by the compiler? declare it HL_PREFETCH_FN (core/hl.h)"
    bad=1
  fi
done
[ "$n" -gt 0 ] || { echo "check-prefetch: found no source that prefetches"; exit 1; }

# Per helper, not per object (one live prefetch in an object hid a dead
# one in reshape.c from stop 28 to Dec 5): gcc's own pure/const analysis
# (-fdump-tree-local-pure-const1 and -fdump-ipa-pure-const) names every
# function it may delete calls of.
# Each such static function that prefetches must be HL_PREFETCH_FN, even
# when this build's objdump still shows its prefetches (another caller,
# compiler or flags may not inline it). A helper gcc inlined before that
# analysis is not named, and needs none. HL_CC (the Makefile passes
# $(CC) $(CFLAGS) $(INCLUDES)) compiles the sources for it.
if [ -n "${HL_CC:-}" ]; then
  dump=$(mktemp -d) || exit 1
  if ! echo 'int x;' | $HL_CC -fdump-tree-local-pure-const1 -dumpdir "$dump/" -x c -c - \
         -o "$dump/x.o" 2>/dev/null; then
    echo "check-prefetch: per-helper check skipped: HL_CC has no gcc pure-const dumps"
    srcs=
  fi
  for src in $(printf '%s\n' $srcs | sort -u); do
    rm -f "$dump"/*
    $HL_CC -O2 -fdump-tree-local-pure-const1 -fdump-ipa-pure-const -dumpdir "$dump/" -c "$src" -o "$dump/x.o" 2>/dev/null ||
      { echo "check-prefetch: $src: could not compile it with HL_CC"; bad=1; continue; }
    pure=$(sed -n 's/^Function found to be \(looping \)\{0,1\}\(const\|pure\): \([A-Za-z_0-9]*\)\/.*/\3/p' \
           "$dump"/*pure-const* 2>/dev/null | sort -u)
    # the file and the headers of ours it includes
    files="$src $(sed -n 's/^#include "\(.*\)"/\1/p' "$src" | while read -r h; do
             for d in $dirs; do [ -f "$d/$h" ] && echo "$d/$h"; done; done)"
    for f in $files; do
      for fn in $(helpers_in "$f"); do
        printf '%s\n' $pure | grep -qx "$fn" || continue
        # its definition, or the line before (the name at column 0), says
        # so; an extern one is called from other objects, which cannot
        # see its body (no -flto here), so only its own file's calls could go
        def=$(grep -B1 -E "^([A-Za-z_].*[^A-Za-z_0-9])?$fn\(" "$f")
        printf '%s\n' "$def" | grep -q '^HL_PREFETCH_FN\b' && continue
        printf '%s\n' "$def" | grep -q '^static\b' || continue
        echo "check-prefetch: $f: $fn only prefetches (gcc finds it pure), so its calls" \
             "can be deleted: declare it HL_PREFETCH_FN (core/hl.h)"
        bad=1
      done
    done
  done
  rm -rf "$dump"
fi
exit $bad
