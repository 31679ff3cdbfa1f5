#!/usr/bin/env bash
# test_config_docs.sh - README.md's key list, `halflife run --help` and the
# key table of worker/config.c agree. The README's list (between the
# keys:begin and keys:end lines) must be byte for byte what
# `halflife run --help-markdown` prints, as `make readme-keys` writes it;
# and the keys of that list and of --help must be the same set, so a key
# added to, renamed in or removed from the table shows up in both or fails.
# README.md's metric table names every metric the worker registers,
# `halflife --help` names every verb of each command's usage lines,
# README.md's command list every option of them (optional or required as
# there), `halflife run --help`
# every exit status README.md gives, and README.md's Layout block every
# source file of core/, worker/ and worker/cmd/.
set -u
name=config_docs
top=${HL_TOP:-$(cd "$(dirname "$0")/../.." && pwd)}
hl=${HL_HALFLIFE:-${HL_BUILD:-$top/build}/halflife}
readme=$top/README.md

if [ ! -x "$hl" ]; then
  echo "SKIP $name: $hl not built"; exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0

# The README's section as make readme-keys writes it: a blank line, the
# table, a blank line, between the marker lines.
if ! grep -q '^<!-- keys:begin' "$readme" || ! grep -q '^<!-- keys:end' "$readme"; then
  echo "FAIL $name.readme_current: README.md lacks the <!-- keys:begin --> / <!-- keys:end --> lines"
  exit 1
fi
awk '/^<!-- keys:end/ {f = 0} f; /^<!-- keys:begin/ {f = 1}' "$readme" >"$tmp/readme.md"
{ echo; "$hl" run --help-markdown; echo; } >"$tmp/gen.md"
if cmp -s "$tmp/readme.md" "$tmp/gen.md"; then
  echo "PASS $name.readme_current"
else
  echo "FAIL $name.readme_current: README.md's key list is not what 'halflife run --help-markdown' prints; run make readme-keys"
  diff -u "$tmp/readme.md" "$tmp/gen.md" | head -40 | sed 's/^/    /'
  fail=1
fi

# The keys: first column of the README's table rows; first word of each
# listing line of --help (two spaces in; the allowed values are six in).
sed -n 's/^| `\([^`]*\)` |.*/\1/p' "$tmp/readme.md" | sort >"$tmp/readme.keys"
"$hl" run --help | awk '/^configuration keys/ {f = 1; next} f && /^  [^ ]/ {print $1}' \
  | sort >"$tmp/help.keys"
if [ ! -s "$tmp/help.keys" ] || [ ! -s "$tmp/readme.keys" ]; then
  echo "FAIL $name.keys: no keys found (--help: $(wc -l <"$tmp/help.keys"), README: $(wc -l <"$tmp/readme.keys"))"
  exit 1
fi
only_readme=$(comm -23 "$tmp/readme.keys" "$tmp/help.keys" | tr '\n' ' ')
only_help=$(comm -13 "$tmp/readme.keys" "$tmp/help.keys" | tr '\n' ' ')
if [ -z "$only_readme" ]; then
  echo "PASS $name.readme_keys_in_help"
else
  echo "FAIL $name.readme_keys_in_help: README.md lists keys the table lacks: $only_readme(run make readme-keys)"
  fail=1
fi
if [ -z "$only_help" ]; then
  echo "PASS $name.help_keys_in_readme"
else
  echo "FAIL $name.help_keys_in_readme: README.md lacks keys of the table: $only_help(run make readme-keys)"
  fail=1
fi
# --help's defaults in one column: a fixed width pushed those of the long
# keys (schema.registry.auto.register) out of line. kafka.* has none.
cols=$("$hl" run --help | awk '/^configuration keys/ {f = 1; next}
  f && /^  [^ ]/ && $1 != "kafka.*" {match($0, /^  [^ ]+ +/); print RLENGTH}' | sort -u)
if [ -n "$cols" ] && [ "$(echo "$cols" | wc -l)" = 1 ]; then
  echo "PASS $name.help_defaults_aligned"
else
  echo "FAIL $name.help_defaults_aligned: the defaults start at columns $(echo $cols)"
  fail=1
fi
# The metrics: every name the worker registers (each is a "halflife_..."
# literal in worker/*.c, passed to hl_metrics_counter/gauge/histogram) has
# a row in README.md's metric table, between the metrics:begin and
# metrics:end lines, and every row there names one the worker registers; a
# metric added or renamed without its row, or a row left behind, fails.
awk '/^<!-- metrics:end/ {f = 0} f; /^<!-- metrics:begin/ {f = 1}' "$readme" \
  | sed -n 's/^| `\(halflife_[a-z0-9_]*\)` |.*/\1/p' | sort >"$tmp/readme.metrics"
grep -ohE '"halflife_[a-z0-9_]+"' "$top"/worker/*.c | tr -d '"' | sort -u >"$tmp/code.metrics"
if [ ! -s "$tmp/code.metrics" ]; then
  echo "FAIL $name.metrics: no metric names found in $top/worker/*.c"
  exit 1
fi
undocumented=$(comm -13 "$tmp/readme.metrics" "$tmp/code.metrics" | tr '\n' ' ')
stale=$(comm -23 "$tmp/readme.metrics" "$tmp/code.metrics" | tr '\n' ' ')
if [ -z "$undocumented" ]; then
  echo "PASS $name.metrics_in_readme"
else
  echo "FAIL $name.metrics_in_readme: README.md's metric table (<!-- metrics:begin -->) lacks: $undocumented"
  fail=1
fi
if [ -z "$stale" ]; then
  echo "PASS $name.readme_metrics_exist"
else
  echo "FAIL $name.readme_metrics_exist: README.md's metric table lists metrics the worker does not register: $stale"
  fail=1
fi

# Each metric's type, label names and HELP as README.md's row gives them,
# read from every place in worker/*.c that registers it. /metrics shows
# only the first registration's HELP, and only of the series a setting
# turns on, so test_metrics_truth's help_is_readme misses a second copy
# left behind (halflife_dlq_errors_total is registered by the worker and
# by the item reader) and every series of state.store=kafka, items.topic,
# the registry and the index; type and labels were checked nowhere.
if out=$(/usr/bin/python3 - "$top" <<'PY'
import glob, os, re, sys
top = sys.argv[1]
SPACE = re.compile(r'(?:\s|\\\n|/\*.*?\*/)*', re.S)
ESC = {'n': '\n', 't': '\t', '"': '"', '\\': '\\'}

def literal(s, j):
    """The adjacent C string literals at s[j:] joined, and the end; None if none."""
    parts = []
    while True:
        j = SPACE.match(s, j).end()
        if j >= len(s) or s[j] != '"':
            return ("".join(parts) if parts else None), j
        k = j + 1
        while s[k] != '"':
            parts.append(ESC.get(s[k + 1], s[k:k + 2]) if s[k] == '\\' else s[k])
            k += 2 if s[k] == '\\' else 1
        j = k + 1

def arg_end(s, j):
    depth = 0
    while True:
        if s[j] == '"':
            j = literal(s, j)[1]
            continue
        if s[j] in '([':
            depth += 1
        elif s[j] in ')]' and depth == 0 or s[j] == ',' and depth == 0:
            return j
        elif s[j] in ')]':
            depth -= 1
        j += 1

src = {f: open(f).read() for f in sorted(glob.glob(top + "/worker/*.[ch]"))}
def resolve(s, j):
    """The text of the argument at s[j:]: a literal, or the literal a
    constant of that name is set to (in this file first); "" for NULL (a
    later registration: the first one's HELP is shown)."""
    text, end = literal(s, j)
    ident = s[j:arg_end(s, j)].strip()
    if text is not None or ident == "NULL":
        return text if text is not None else ""
    for body in [s] + list(src.values()):
        for m in re.finditer(r'(?:#define\s+%s\b|\b%s\s*(?:\[\])?\s*=)' % (ident, ident), body):
            if literal(body, m.end())[0] is not None:
                return literal(body, m.end())[0]
    return None

rows = {}
for line in open(top + "/README.md"):
    m = re.match(r"\| `(halflife_\w+)` \| (\w+) \| ([^|]*) \| (.*) \|$", line.rstrip("\n"))
    if m:
        names = sorted(x.split()[0] for x in m.group(3).split(";") if x.strip())
        rows[m.group(1)] = (m.group(2), names, m.group(4).replace("\\|", "|").strip())
bad, n = [], 0
for f, s in src.items():
    for m in re.finditer(r'\bhl_metrics_(counter|gauge|histogram)\s*\(', s):
        j = arg_end(s, m.end())
        name, j = literal(s, j + 1)
        if name is None or name not in rows:
            continue            # the registry's own code; names: the check above
        at = "%s (%s:%d)" % (name, os.path.basename(f), s.count("\n", 0, m.start()) + 1)
        kind, labels, meaning = rows[name]
        n += 1
        j = SPACE.match(s, j).end() + 1
        help_text = resolve(s, SPACE.match(s, j).end())
        j = arg_end(s, j) + 1
        lab = literal(s, j)[0]
        got = sorted(set(re.findall(r'(\w+)=', lab))) if lab is not None else (
            [] if s[SPACE.match(s, j).end():].startswith("NULL") else None)
        if m.group(1) != kind:
            bad.append("%s: a %s, README says %s" % (at, m.group(1), kind))
        if got is not None and got != labels:
            bad.append("%s: labels %s, README says %s" % (at, got, labels))
        if help_text != meaning and help_text != "":
            bad.append("%s: HELP %r, README says %r" % (at, help_text, meaning))
print("; ".join(bad) if bad or n > 100 else "only %d registrations found" % n)
sys.exit(1 if bad or n <= 100 else 0)
PY
); then
  echo "PASS $name.metrics_rows_are_code"
else
  echo "FAIL $name.metrics_rows_are_code: $out"
  fail=1
fi

# The commands: each one `halflife --help` lists shows every verb of its
# own usage lines (`halflife snapshot --help`: inspect and dump) on its
# line, and has a line in README.md's command list, so a verb or a command
# added in one place is not missing from where a user looks first.
# option_depths: "--OPT 1" for each long option inside [ ] of stdin's
# lines, "--OPT 0" for one outside (required).
option_depths() {
  awk '{ d = 0
    for (i = 1; i <= length($0); i++) {
      c = substr($0, i, 1)
      if (c == "[") d++
      else if (c == "]") d--
      else if (substr($0, i, 2) == "--" && (i == 1 || substr($0, i - 1, 1) ~ /[ [|]/) &&
               match(substr($0, i), /^--[a-zA-Z][-a-zA-Z]*/)) {
        print substr($0, i, RLENGTH), (d > 0 ? 1 : 0)
        i += RLENGTH - 1
      }
    } }' | grep -v '^--help'
}
"$hl" --help | awk '/^commands:/ {f = 1; next} f && /^  [a-z]/' >"$tmp/top.help"
cmd_fail=0
for cmd in $(awk '{print $1}' "$tmp/top.help"); do
  line=$(awk -v c="$cmd" '$1 == c' "$tmp/top.help")
  verbs=$("$hl" "$cmd" --help 2>/dev/null \
    | sed -n "s/^\(usage:\)\{0,1\} *halflife $cmd \([a-z][a-z-]*\)\( .*\)\{0,1\}\$/\2/p" | sort -u)
  missing=""
  for v in $verbs; do
    case " $line " in *" $v "*|*" $v|"*|*"|$v "*) ;; *) missing="$missing $v" ;; esac
  done
  if [ -n "$missing" ]; then
    echo "FAIL $name.top_help_$cmd: 'halflife --help' shows '$line' without the verbs$missing of 'halflife $cmd --help'"
    cmd_fail=1
  fi
  if ! grep -q "^halflife $cmd " "$readme"; then
    echo "FAIL $name.readme_cmd_$cmd: README.md's command list lacks 'halflife $cmd'"
    cmd_fail=1
  fi
  # Every option of the command's usage lines (up to its first blank line;
  # --help itself aside) is on its lines of README.md's command list, the
  # one beginning "halflife CMD" and those indented under it.
  opts=$("$hl" "$cmd" --help 2>/dev/null | awk 'NR == 1, /^$/' \
    | grep -oE '(^| |\[)-{1,2}[a-zA-Z][-a-zA-Z]*' | tr -d ' [' | grep -v '^--help' | sort -u)
  awk -v c="$cmd" '/^## The commands of build\/halflife/ {s = 1} s && /^```$/ {b++; next}
    s && b == 1 { if ($1 == "halflife") f = ($2 == c); if (f) print }' "$readme" >"$tmp/readme.cmd"
  missing=""
  for o in $opts; do
    grep -qE -- "(^| |\[)$o( |\]|\$)" "$tmp/readme.cmd" || missing="$missing $o"
  done
  if [ -n "$missing" ]; then
    echo "FAIL $name.readme_opts_$cmd: README.md's line for 'halflife $cmd' lacks$missing of its usage"
    cmd_fail=1
  fi
  # Each long option is optional (inside [ ]) or required (bare) there as
  # in the usage lines: README.md gave eval's --model as required long
  # after --baseline popularity made it optional.
  "$hl" "$cmd" --help 2>/dev/null | awk 'NR == 1, /^$/' | option_depths | sort -u >"$tmp/usage.depth"
  wrong=$(option_depths <"$tmp/readme.cmd" | sort -u | while read -r o d; do
    grep -q -- "^$o " "$tmp/usage.depth" && ! grep -qx -- "$o $d" "$tmp/usage.depth" &&
      printf ' %s (README: %s, usage: %s)' "$o" "$([ "$d" = 1 ] && echo optional || echo required)" \
        "$([ "$d" = 1 ] && echo required || echo optional)"; done)
  if [ -n "$wrong" ]; then
    echo "FAIL $name.readme_optional_$cmd: README.md's line for 'halflife $cmd' disagrees on$wrong"
    cmd_fail=1
  fi
done
if [ ! -s "$tmp/top.help" ]; then
  echo "FAIL $name.commands: 'halflife --help' lists no command"
  cmd_fail=1
fi
[ $cmd_fail -eq 0 ] && echo "PASS $name.commands"
[ $cmd_fail -eq 0 ] || fail=1

# `halflife run --help` names every exit status README.md gives for run
# (it named only 1; 2, 0 and a second signal's were in README alone).
"$hl" run --help >"$tmp/run.help"
exit_fail=0
for want in 'Exit status: 0 after a clean stop' '2 a usage or' '1 when it cannot start' \
            "128 + the signal's number" '142 (SIGALRM)'; do
  if ! tr '\n' ' ' <"$tmp/run.help" | tr -s ' ' | grep -qF -- "$want"; then
    echo "FAIL $name.run_help_exit: 'halflife run --help' lacks \"$want\" (README.md gives it)"
    exit_fail=1
  fi
done
if ! grep -qF "signal's number (143, 130" "$readme"; then
  echo "FAIL $name.run_help_exit: README.md does not give a second signal's exit status"
  exit_fail=1
fi
[ $exit_fail -eq 0 ] && echo "PASS $name.run_help_exit" || fail=1

# The Layout block of README.md names every source file of core/, worker/
# and worker/cmd/ (by its name without .c) in that folder's entry, so a
# reader looking for a file finds where it is and what it does.
awk '/^## Layout/ {s = 1} s && /^```$/ {b++; next} s && b == 1' "$readme" >"$tmp/layout"
layout_fail=0
for dir in core worker worker/cmd; do
  awk -v d="$dir/" '{ if ($1 ~ /\/$/) f = ($1 == d); if (f) print }' "$tmp/layout" >"$tmp/entry"
  missing=""
  for f in "$top/$dir"/*.c; do
    n=$(basename "$f" .c)
    grep -qE "(^|[^a-z0-9_])$n([^a-z0-9_]|\$)" "$tmp/entry" || missing="$missing $n"
  done
  if [ -n "$missing" ]; then
    echo "FAIL $name.layout_$dir: README.md's Layout entry for $dir/ does not name$missing"
    layout_fail=1
  fi
done
[ $layout_fail -eq 0 ] && echo "PASS $name.layout" || fail=1

dups=$(uniq -d "$tmp/help.keys" | tr '\n' ' ')
if [ -z "$dups" ]; then
  echo "PASS $name.keys_unique"
else
  echo "FAIL $name.keys_unique: the table lists twice: $dups"
  fail=1
fi
exit $fail
