#!/usr/bin/env bash
# Try the newest releases of every dependency, and refresh constraints.txt when the suite passes on them.
#
#   bash scripts/refresh_lock.sh            # throw-away venv, newest releases, the README's test command
#   bash scripts/refresh_lock.sh --keep     # ... and keep the venv (its path is printed)
#
# It installs torch==2.13.0 and `.[test]` without the lock into a new venv (so pip picks the newest
# releases the floors in pyproject.toml allow), prints the packages whose versions moved against
# constraints.txt, runs `ruff check && python -m pytest` there, and only when both pass rewrites
# constraints.txt with what was installed. A failing suite leaves the lock as it was and exits non-zero:
# the moved packages it printed are the suspects.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
keep=false
[[ "${1:-}" == "--keep" ]] && keep=true
venv=$(mktemp -d -t tinythinker-lock-XXXXXX)
cleanup() { if ! $keep; then rm -rf "$venv"; else echo "venv kept: $venv"; fi; }
trap cleanup EXIT

python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q torch==2.13.0
"$venv/bin/python" -m pip install -q -e ".[test]"

# the lock: every installed distribution but the project itself and pip's own tools; torch without its
# local build label (+cpu), so the same line installs the CUDA build on a GPU machine
fresh="$venv/constraints.txt"
{
  echo "# The package set the test suite passed with (bash scripts/refresh_lock.sh writes it; pip install -c constraints.txt ...)."
  echo "# Floors for installing into your own environment stay in pyproject.toml."
  "$venv/bin/python" -m pip freeze --exclude-editable --all | grep -viE '^(pip|setuptools|wheel|tinythinker)==' \
    | sed -E 's/^(torch==[^+]+)\+.*/\1/' | LC_ALL=C sort -f
} > "$fresh"

echo "== packages that moved against constraints.txt (old -> new) =="
python3 - "$repo/constraints.txt" "$fresh" <<'EOF'
import sys
def pins(path):
    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except FileNotFoundError:
        return {}
    return {l.split("==")[0].lower(): l.split("==")[1] for l in lines if "==" in l and not l.startswith("#")}
old, new = pins(sys.argv[1]), pins(sys.argv[2])
moved = [f"{n}: {old.get(n, '-')} -> {new.get(n, '-')}" for n in sorted(set(old) | set(new)) if old.get(n) != new.get(n)]
print("\n".join(moved) if moved else "nothing moved")
EOF

echo "== the README's test command on the newest releases =="
(cd "$repo" && PATH="$venv/bin:$PATH" HF_HOME="$venv/hf" ruff check && PATH="$venv/bin:$PATH" HF_HOME="$venv/hf" python -m pytest -q -p no:cacheprovider)
cp "$fresh" "$repo/constraints.txt"
# the locked packages published only as source archives, as wheels (the README installs with --find-links wheels)
sdist_only=$(python3 - "$repo/constraints.txt" <<'EOF2'
import sys
wanted = {"rouge-score", "rouge_score", "sqlitedict", "word2number"}
print(" ".join(l.strip() for l in open(sys.argv[1]) if l.split("==")[0].lower().replace("_", "-") in {w.replace("_", "-") for w in wanted}))
EOF2
)
rm -f "$repo"/wheels/*.whl
"$venv/bin/python" -m pip wheel -q --no-deps -w "$repo/wheels" $sdist_only
echo "the suite passed: constraints.txt and wheels/ refreshed (commit them)"
