# Shared set-up for scripts/test and scripts/demo. Source it; do not run it.
#
#   snapkit_setup_system      git, sqlite3 (apt-get, only what is missing)
#   snapkit_setup_db_servers  PostgreSQL and MariaDB server binaries, best effort
#   snapkit_setup_venv        .venv in the repo root + `pip install -e '.[test]'`
#
# apt-get runs only when something is missing, `apt-get update` at most once,
# through sudo only when not root. pip runs only when pyproject.toml (or the
# interpreter) changed since the last install: the stamp is .venv/.snapkit-setup-stamp.

SNAPKIT_ROOT="$(cd -P "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SNAPKIT_VENV="$SNAPKIT_ROOT/.venv"
SNAPKIT_PY="$SNAPKIT_VENV/bin/python"
_snapkit_apt_updated=0

_say() { printf 'setup: %s\n' "$*" >&2; }

_as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        if [ -t 0 ]; then sudo "$@"; else sudo -n "$@"; fi  # no stdin (CI): never wait for a password
    else
        _say "need root to run: $*  (no sudo found)"
        return 1
    fi
}

# apt_install PKG… — apt-get update once per run, then install; non-zero on failure.
apt_install() {
    if ! command -v apt-get >/dev/null 2>&1; then
        _say "apt-get not found; install these yourself: $*"
        return 1
    fi
    if [ "$_snapkit_apt_updated" -eq 0 ]; then
        _say "apt-get update"
        _as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || return 1
        _snapkit_apt_updated=1
    fi
    _say "apt-get install $*"
    _as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

_have() { command -v "$1" >/dev/null 2>&1; }

snapkit_setup_system() {
    local missing=()
    _have git || missing+=(git)
    _have sqlite3 || missing+=(sqlite3)
    _have python3 || { _say "python3 is required"; return 1; }
    if [ ${#missing[@]} -gt 0 ]; then
        apt_install "${missing[@]}" || { _say "could not install: ${missing[*]}"; return 1; }
    fi
    if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        _say "snapkit needs Python >= 3.11; python3 is $(python3 -V 2>&1)"
        return 1
    fi
}

# The directory holding initdb/pg_ctl, or nothing. Debian keeps them off PATH.
snapkit_pg_bindir() {
    local d
    if _have initdb && _have pg_ctl; then
        dirname "$(command -v pg_ctl)"
        return 0
    fi
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
            echo "$d"
            return 0
        fi
    done
    return 1
}

_have_mariadbd() { _have mariadbd || [ -x /usr/sbin/mariadbd ]; }

# Best effort: a missing server only makes the tests that need it skip.
# A failed attempt is remembered in .venv/.snapkit-no-db-servers (delete it to retry),
# so a machine without apt or sudo does not pay for apt-get at every run.
snapkit_setup_db_servers() {
    local missing=() pgdir marker="$SNAPKIT_VENV/.snapkit-no-db-servers"
    snapkit_pg_bindir >/dev/null || missing+=(postgresql)
    _have_mariadbd || missing+=(mariadb-server)
    if [ ${#missing[@]} -gt 0 ]; then
        if [ -e "$marker" ]; then
            _say "no ${missing[*]} (install failed before; rm $marker to retry): their tests will be skipped"
        elif ! apt_install "${missing[@]}"; then
            _say "WARNING: could not install ${missing[*]}; tests that need these servers will be skipped"
            [ -d "$SNAPKIT_VENV" ] && : >"$marker"
        fi
    fi
    # Let tests find the servers without knowing Debian's layout.
    if pgdir="$(snapkit_pg_bindir)"; then
        case ":$PATH:" in *":$pgdir:"*) ;; *) PATH="$pgdir:$PATH" ;; esac
    fi
    if [ -x /usr/sbin/mariadbd ]; then
        case ":$PATH:" in *":/usr/sbin:"*) ;; *) PATH="$PATH:/usr/sbin" ;; esac
    fi
    export PATH
    return 0
}

_stamp_value() {
    { python3 -V 2>&1; cat "$SNAPKIT_ROOT/pyproject.toml"; } | cksum | cut -d' ' -f1
}

snapkit_setup_venv() {
    local lock_fd
    # Two runs at once (two terminals, test + demo) must not pip-install over each other.
    if _have flock; then
        exec {lock_fd}>"${TMPDIR:-/tmp}/snapkit-setup-$(printf %s "$SNAPKIT_ROOT" | cksum | cut -d' ' -f1).lock"
        flock "$lock_fd"
    fi
    _snapkit_setup_venv_locked
    local rc=$?
    [ -n "${lock_fd:-}" ] && exec {lock_fd}>&-
    return $rc
}

_snapkit_setup_venv_locked() {
    local stamp="$SNAPKIT_VENV/.snapkit-setup-stamp" want probe
    if [ ! -x "$SNAPKIT_PY" ] || ! "$SNAPKIT_PY" -c '' 2>/dev/null; then
        probe="$(mktemp -d)"
        if ! python3 -m venv "$probe/v" >/dev/null 2>&1; then
            local ver
            ver="$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
            apt_install python3-venv || apt_install "python$ver-venv" ||
                { rm -rf "$probe"; _say "python3 -m venv does not work; install python3-venv"; return 1; }
        fi
        rm -rf "$probe"
        _say "creating $SNAPKIT_VENV"
        rm -rf "$SNAPKIT_VENV"
        python3 -m venv "$SNAPKIT_VENV"
    fi
    want="$(_stamp_value)"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        _say "pip install -e '.[test]' (pyproject.toml changed or first run)"
        (cd "$SNAPKIT_ROOT" &&
            "$SNAPKIT_PY" -m pip install -q --disable-pip-version-check -e '.[test]' >&2)
        echo "$want" >"$stamp"
    fi
}
