#!/usr/bin/env bash
# test_metrics_promtool.sh - Prometheus's own parser and linter agree with
# our exposition text: test_metrics renders a sample holding every kind of
# series (counters, gauges, labelled and bare histograms, label values with
# quotes, backslashes and newlines, multi-line HELP) and `promtool check
# metrics` must accept it without a single lint problem.
set -u
name=metrics_promtool
build=${HL_BUILD:-$(cd "$(dirname "$0")/../.." && pwd)/build}
bin="$build/tests/test_metrics"

if ! command -v promtool >/dev/null 2>&1; then
  echo "SKIP $name: promtool not installed (Debian package prometheus; make deps)"; exit 0
fi
if [ ! -x "$bin" ]; then
  echo "SKIP $name: $bin not built"; exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if ! HL_METRICS_DUMP="$tmp/sample.prom" "$bin"; then
  echo "FAIL $name: test_metrics could not write the sample"; exit 1
fi
if out=$(promtool check metrics <"$tmp/sample.prom" 2>&1); then
  echo "PASS $name"
else
  echo "FAIL $name: promtool check metrics: $(echo "$out" | tr '\n' ' ')"
  sed 's/^/    /' "$tmp/sample.prom" | head -40
  exit 1
fi
# Every kind must be in the sample, or the check above proves less than it says.
for kind in counter gauge histogram; do
  if grep -q "^# TYPE .* $kind\$" "$tmp/sample.prom"; then
    echo "PASS ${name}_has_$kind"
  else
    echo "FAIL ${name}_has_$kind: the sample has no $kind"
  fi
done
