#!/usr/bin/env bash
# edge-mood in a real Home Assistant Core. Installs Home Assistant into its own venv (Python >= 3.13,
# with uv), then runs bench/home_assistant_check.py: a local mosquitto, HA's MQTT integration pointed
# at it, two daemons on ../shared/data/photos, and checks of what HA makes of them (entities, states,
# event, device triggers in automations, birth-message re-announce, unavailability, HA's log). Prints
# the entities, their states and HA's MQTT and WARNING/ERROR log lines. Not part of CI.
#
#   bench/home_assistant.sh [HA_VERSION]        # default 2026.2.3; 2025.4.4 works too
#
# Environment: HA_PYTHON (a Python >= 3.13; default python3.13 on PATH or under pyenv), EDGE_PYTHON (a
# Python with edge-mood installed; default .venv/bin/python), HA_VENVS (where the venvs are kept;
# default ~/.cache/edge-mood), HA_WORK (working folder; default a new temporary one). Needs mosquitto,
# ../shared (photos, YuNet model) and PyPI; Home Assistant installs its frontend on its first start.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HA_VERSION=${1:-2026.2.3}
EDGE_PYTHON=${EDGE_PYTHON:-$REPO/.venv/bin/python}
HA_VENVS=${HA_VENVS:-${XDG_CACHE_HOME:-$HOME/.cache}/edge-mood}
VENV=$HA_VENVS/ha-$HA_VERSION

fail() { echo "ha: FAIL: $*" >&2; exit 1; }

find_python() {
    local candidate
    for candidate in "${HA_PYTHON:-}" python3.14 python3.13 "$HOME"/.pyenv/versions/3.1[3-9]*/bin/python3; do
        [ -n "$candidate" ] || continue
        if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 13))' 2>/dev/null; then
            echo "$candidate"
            return
        fi
    done
    fail "no Python >= 3.13 found; set HA_PYTHON"
}

[ -x "$EDGE_PYTHON" ] || fail "no $EDGE_PYTHON; make the project venv (README, Development) or set EDGE_PYTHON"
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || fail "mosquitto not installed (apt-get install mosquitto)"

if [ ! -x "$VENV/bin/hass" ]; then
    PYTHON=$(find_python)
    echo "ha: installing Home Assistant $HA_VERSION with $("$PYTHON" --version) into $VENV"
    start=$(date +%s)
    nice -n 15 "$PYTHON" -m venv "$VENV"
    nice -n 15 "$VENV/bin/pip" install -q uv
    # Home Assistant 2025.9 and later ask for Python 3.13.2; an older 3.13 runs them too, so resolve
    # as for 3.13.2 where the interpreter is older.
    resolve_for=$("$VENV/bin/python" -c 'import sys; print("3.13.2" if sys.version_info < (3, 13, 2) else "")')
    nice -n 15 "$VENV/bin/uv" pip install --python "$VENV/bin/python" ${resolve_for:+--python-version "$resolve_for"} \
        "homeassistant==$HA_VERSION"
    echo "ha: installed in $(($(date +%s) - start)) s"
fi
HASS=$VENV/bin/hass
if ! "$VENV/bin/python" -c 'import sys; from homeassistant.const import REQUIRED_PYTHON_VER as v; sys.exit(sys.version_info[:3] < v)'; then
    # The same interpreter override at run time: HA's start-up check is the only thing that refuses it.
    HASS=$VENV/bin/hass-older-python
    printf '#!%s\n%s\n' "$VENV/bin/python" 'import sys
import homeassistant.const as const
const.REQUIRED_PYTHON_VER = sys.version_info[:3]
from homeassistant.__main__ import main
sys.exit(main())' >"$HASS"
    chmod +x "$HASS"
    echo "ha: NOTE: $("$VENV/bin/python" --version) is older than Home Assistant asks for; started through $HASS"
fi
echo "ha: Home Assistant $("$VENV/bin/python" -c 'from homeassistant.const import __version__; print(__version__)') on $("$VENV/bin/python" --version)"
cd "$REPO"
exec "$EDGE_PYTHON" bench/home_assistant_check.py --hass "$HASS" ${HA_WORK:+--work "$HA_WORK"}
