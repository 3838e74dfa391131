# Sourced by scripts/serve and scripts/test: the project venv `.venv` in the repository root,
# so the README's commands work whatever the machine's Python (Debian's refuses `pip install`
# outside a venv: PEP 668) and never touch it.
#   project_venv EXTRAS   make .venv if missing (from the first Python 3.11+ on PATH, or
#                         $SETTLESIM_PYTHON), install this checkout editable with EXTRAS
#                         ("" or "[test]"), again only when pyproject.toml changed.
# Messages go to stderr, prefixed with the script's name.

VENV=.venv
_say() { echo "scripts/${0##*/}: $*" >&2; }

_is_python311() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; }

base_python() {  # the interpreter to build the venv from
  local candidate
  if [ -n "${SETTLESIM_PYTHON:-}" ]; then
    _is_python311 "$SETTLESIM_PYTHON" && { echo "$SETTLESIM_PYTHON"; return 0; }
    _say "SETTLESIM_PYTHON=$SETTLESIM_PYTHON is not a Python 3.11 or newer"; return 1
  fi
  for candidate in python3 python3.14 python3.13 python3.12 python3.11 python; do
    if command -v "$candidate" >/dev/null 2>&1 && _is_python311 "$candidate"; then
      command -v "$candidate"; return 0
    fi
  done
  _say "no Python 3.11 or newer on PATH: install one (apt-get install python3) or set SETTLESIM_PYTHON"
  return 1
}

_make_venv() {  # $1: base python. Debian and Ubuntu ship venv's pip bootstrap apart (python3-venv).
  local python=$1 version failed
  rm -rf "$VENV"
  failed=$("$python" -m venv "$VENV" 2>&1) && return 0
  rm -rf "$VENV"
  if ! "$python" -c 'import ensurepip' >/dev/null 2>&1; then
    version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      _say "$python has no ensurepip: installing python$version-venv"
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "python$version-venv" >/dev/null) \
        || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null || true
      failed=$("$python" -m venv "$VENV" 2>&1) && return 0
      rm -rf "$VENV"
    fi
    _say "$python cannot make a venv: install python$version-venv (apt-get install python$version-venv) and run again"
    return 1
  fi
  _say "$python -m venv $VENV failed: $(echo "$failed" | tail -n 1)"
  return 1
}

project_venv() {
  local extras=$1 want stamp
  if ! _is_python311 "$VENV/bin/python" || ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
    local python
    python=$(base_python) || exit 1
    _say "making $VENV (the project venv) from $python, $("$python" --version 2>&1)"
    _make_venv "$python" || exit 1
  fi
  # One stamp per extras, holding the pyproject.toml it was installed from: the editable install
  # follows the code, only a change of dependencies or entry points needs pip again.
  want=$(cksum < pyproject.toml)
  stamp="$VENV/.settlesim-installed${extras:+-${extras//[^a-z]/}}"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] \
     && { [ -n "$extras" ] || [ "$(cat "$VENV/.settlesim-installed-test" 2>/dev/null)" != "$want" ]; }; then
    _say "installing settlesim$extras into $VENV"
    rm -f "$VENV"/.settlesim-installed*
    "$VENV/bin/python" -m pip install -q -e ".$extras" || exit 1
    echo "$want" > "$stamp"
  fi
}
