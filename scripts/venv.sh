# Sourced by scripts that need the Python venv: `ensure_venv DIR LABEL [WHY]` creates DIR as
# a venv when it has no pip, installing Debian's python3-venv first when python3 lacks
# ensurepip (as root, with apt-get). Callers define `die`.
ensure_venv() {
    local venv=$1 label=$2 why=${3:-}
    [ -x "$venv/bin/pip" ] && return 0
    echo "$label: creating the venv $venv${why:+ ($why)}"
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    if ! python3 -m venv "$venv" 2>"${TMPDIR:-/tmp}/chaosnet-venv.err"; then
        # Debian's python3 ships venv without ensurepip: that is the python3-venv package.
        if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
            echo "$label: installing python3-venv (Debian's python3 needs it to create a venv)"
            export DEBIAN_FRONTEND=noninteractive
            apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-venv >/dev/null ||
                die "apt-get install python3-venv failed"
            rm -rf "$venv"
            /usr/bin/python3 -m venv "$venv" || die "python3 -m venv failed even with python3-venv"
        else
            cat "${TMPDIR:-/tmp}/chaosnet-venv.err" >&2
            die "python3 -m venv failed: install python3-venv (apt-get install python3-venv) or run as root"
        fi
    fi
}
