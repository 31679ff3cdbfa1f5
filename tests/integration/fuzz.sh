#!/usr/bin/env bash
# fuzz.sh - run every libFuzzer target briefly, so make test catches a
# parser that crashes, leaks or trips a sanitizer on hostile bytes.
#
# The Makefile builds build/fuzz/fuzz_<name> from tests/fuzz/fuzz_<name>.c
# with clang (-fsanitize=fuzzer,address,undefined) when clang exists. Each
# runs for HL_FUZZ_SECONDS when set, else for an equal share of
# HL_FUZZ_BUDGET seconds (default 24, at least 3 s each: with the ~1.5 s
# each target takes to start and stop, seven targets take what three took
# at 10 s each, about 35 s, so adding one does not lengthen make test),
# from a fresh seed
# corpus in a temporary directory: every target writes its own seeds there
# from LLVMFuzzerInitialize when HL_FUZZ_SEEDS=DIR is set (fuzz_codec.c's
# include weights of 1e38, NaN, inf and -1 and ids that are not UTF-8;
# fuzz_model.c's valid models, fuzz_changelog.c's a real flush's records,
# fuzz_registry.c's registry answers, fuzz_config.c's properties files,
# fuzz_dataset.c's event files of each format),
# and files in tests/fuzz/corpus/<name>/, if any, are copied in. A crash
# input is kept in $HL_BUILD/fuzz-artifacts/ for `build/fuzz/fuzz_<name> FILE`.
# Under HL_SAN=1 (make test SAN=1) it skips: the plain pass already ran them.
set -u
top=${HL_TOP:-$(cd "$(dirname "$0")/../.." && pwd)}
build=${HL_BUILD:-$top/build}
budget=${HL_FUZZ_BUDGET:-24}

if [ "${HL_SAN:-0}" = 1 ]; then
  echo "SKIP fuzz: HL_SAN=1, the fuzzers ran in the plain make test"; exit 0
fi
if ! command -v clang >/dev/null 2>&1; then
  echo "SKIP fuzz: clang is not installed, no libFuzzer targets"; exit 0
fi
shopt -s nullglob
targets=()
for bin in "$top"/build/fuzz/fuzz_*; do
  case $bin in *.d|*.o) continue ;; esac
  [ -x "$bin" ] && targets+=("$bin")
done
if [ ${#targets[@]} -eq 0 ]; then
  echo "SKIP fuzz: no binaries in $top/build/fuzz (make build/fuzz/fuzz_<name>)"; exit 0
fi
secs=${HL_FUZZ_SECONDS:-$(( budget / ${#targets[@]} ))}
[ "$secs" -ge 3 ] || secs=3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
artifacts="$build/fuzz-artifacts"
mkdir -p "$artifacts"

failed=0
for bin in "${targets[@]}"; do
  name=$(basename "$bin")
  corpus="$tmp/$name"
  mkdir -p "$corpus"
  if [ -d "$top/tests/fuzz/corpus/${name#fuzz_}" ]; then
    cp "$top/tests/fuzz/corpus/${name#fuzz_}"/* "$corpus"/ 2>/dev/null
  fi
  log="$tmp/$name.log"
  if HL_FUZZ_SEEDS="$corpus" "$bin" -max_total_time="$secs" -rss_limit_mb=2048 \
       -timeout=10 -print_final_stats=1 -artifact_prefix="$artifacts/$name-" \
       "$corpus" >"$log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    echo "PASS $name (${runs:-?} inputs in ${secs}s, $(ls "$corpus" | wc -l) in corpus)"
  else
    echo "FAIL $name: crashed or a sanitizer fired; input kept in $artifacts/"
    grep -E 'ERROR|SUMMARY|deadly signal|^ *#[0-5] 0x' "$log" | head -n 12 | sed 's/^/    /'
    failed=1
  fi
done
exit $failed
