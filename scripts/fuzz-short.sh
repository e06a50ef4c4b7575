#!/usr/bin/env bash
# Runs every Go fuzz target in the module for a short time (FUZZTIME, default 3s),
# so `make test` exercises the fuzzers and their committed seed corpora.
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZTIME=${FUZZTIME:-3s}
n=0
while IFS= read -r file; do
  pkg=./$(dirname "$file")
  for target in $(grep -oE '^func (Fuzz[A-Za-z0-9_]+)\(' "$file" | sed -E 's/^func (Fuzz[A-Za-z0-9_]+)\(/\1/'); do
    echo "fuzz $pkg $target ($FUZZTIME)"
    go test -run='^$' -fuzz="^${target}\$" -fuzztime="$FUZZTIME" "$pkg" >/tmp/gongji-fuzz.$$.log 2>&1 || { cat /tmp/gongji-fuzz.$$.log; rm -f /tmp/gongji-fuzz.$$.log; exit 1; }
    n=$((n+1))
  done
done < <(grep -rlE '^func Fuzz' --include='*_test.go' . | grep -v '^./proto/' | sort)
rm -f /tmp/gongji-fuzz.$$.log
echo "fuzz: $n targets ran for $FUZZTIME each, no failures"
