#!/usr/bin/env bash
# Install (or remove) edge-mood as a systemd service on Raspberry Pi OS Bookworm 64-bit.
#
#   sudo systemd/install.sh                  install from the checkout this script sits in, start it
#   sudo systemd/install.sh --uninstall      stop and remove the service and venv, keep config and spool
#   sudo systemd/install.sh --help           every option
#
# Running it again is safe: it upgrades the package, refreshes the unit and models, and keeps an
# existing /etc/edge-mood/config.toml (it only empties the YuNet path an earlier version pinned there).
set -euo pipefail

SERVICE=edge-mood
# Lets the service (and admins added to it) read the config; the service's own user and group are
# dynamic and named edge-mood, so this one must be named differently.
GROUP=edge-mood-config
APP_DIR=/opt/edge-mood
VENV=$APP_DIR/venv
MODEL_DIR=$APP_DIR/models
CONF_DIR=/etc/edge-mood
CONF=$CONF_DIR/config.toml
UNIT_DIR=/etc/systemd/system
STATE_DIRS=(/var/lib/edge-mood /var/lib/private/edge-mood)

# YuNet face detector: fetched and checked by edge/yunet_fetch.py (the pinned URL and sha256 live in edge/locations.py).
YUNET_URL=""
YUNET_SHA256=""

# Staging root, like DESTDIR: everything is written under it, while the paths written into the
# config and unit stay the final ones. Set, it skips apt, the group, ownership and systemctl.
ROOT=${EDGE_MOOD_PREFIX:-}
PYTHON=${EDGE_MOOD_PYTHON:-python3}
# Extra pip options, e.g. "--no-index --find-links /media/usb/wheels" for an offline install.
read -r -a PIP_OPTS <<<"${EDGE_MOOD_PIP_OPTS:-}"

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CHECKOUT=$(dirname "$SCRIPT_DIR")

usage() {
    cat <<EOF
Usage: sudo $0 [options]

Installs edge-mood into $VENV, the YuNet face detector and the expression model into
$MODEL_DIR, a commented config into $CONF (only if none exists), and the
$SERVICE.service unit; then enables and starts it.

Options:
  --source SPEC        what to pip install: a checkout folder, a wheel or sdist, a URL, a version
                       (e.g. 0.2.0) or a requirement (default: $CHECKOUT)
  --yunet-file PATH    use this local YuNet .onnx instead of downloading it (checksum still checked)
  --yunet-url URL      download YuNet from here instead (default: the OpenCV Model Zoo's 2023mar release)
  --yunet-sha256 HEX   expected sha256 of the YuNet file (default: the pinned one of that release)
  --no-apt             do not apt-get install the system packages
  --no-start           install and enable nothing in systemd beyond the unit file
  --uninstall          stop and disable the service, remove the unit, venv and models;
                       keep $CONF_DIR and the spool in /var/lib/edge-mood
  --purge              with --uninstall: also remove the config, the spool and the $GROUP group
  -h, --help           this text

Environment:
  EDGE_MOOD_PREFIX     staging root (for packaging and tests); implies --no-apt and --no-start
  EDGE_MOOD_PYTHON     interpreter for the venv (default: python3)
  EDGE_MOOD_PIP_OPTS   extra pip options, e.g. "--no-index --find-links DIR" offline
EOF
}

say() { printf 'edge-mood install: %s\n' "$*"; }
die() { printf 'edge-mood install: error: %s\n' "$*" >&2; exit 2; }

SOURCE=$CHECKOUT
YUNET_FILE=""
NO_APT=0
NO_START=0
UNINSTALL=0
PURGE=0
ARGS=("$@")  # as given, for the "run it as root" line
while [ $# -gt 0 ]; do
    case $1 in
        --source) SOURCE=${2:?--source needs a value}; shift ;;
        --yunet-file) YUNET_FILE=${2:?--yunet-file needs a path}; shift ;;
        --yunet-url) YUNET_URL=${2:?--yunet-url needs a URL}; shift ;;
        --yunet-sha256) YUNET_SHA256=${2:?--yunet-sha256 needs a checksum}; shift ;;
        --no-apt) NO_APT=1 ;;
        --no-start) NO_START=1 ;;
        --uninstall) UNINSTALL=1 ;;
        --purge) PURGE=1 ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
    shift
done
[ "$PURGE" = 1 ] && [ "$UNINSTALL" = 0 ] && die "--purge goes with --uninstall"
[ -z "$YUNET_SHA256" ] || [[ $YUNET_SHA256 =~ ^[0-9a-f]{64}$ ]] || die "--yunet-sha256 must be 64 lowercase hex digits"

if [ -n "$ROOT" ]; then
    ROOT=$(mkdir -p "$ROOT" && cd "$ROOT" && pwd)
    NO_APT=1
    NO_START=1
elif [ "$(id -u)" != 0 ]; then
    die "run it as root: sudo $0${ARGS[*]:+ ${ARGS[*]}}"
fi

# systemctl only where systemd is the running init (not in a chroot or container build).
have_systemd() { [ -z "$ROOT" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; }

# ---------------------------------------------------------------------------------------------------
uninstall() {
    if have_systemd; then
        systemctl disable --now "$SERVICE.service" 2>/dev/null || true
    fi
    rm -f "$ROOT$UNIT_DIR/$SERVICE.service"
    rm -rf "$ROOT$APP_DIR"
    if [ "$PURGE" = 1 ]; then
        rm -rf "$ROOT$CONF_DIR" "$ROOT$UNIT_DIR/$SERVICE.service.d"
        for dir in "${STATE_DIRS[@]}"; do rm -rf "$ROOT$dir"; done
        if [ -z "$ROOT" ] && getent group "$GROUP" >/dev/null; then groupdel "$GROUP"; fi
        say "removed the service, $APP_DIR, $CONF_DIR and the spool"
    else
        say "removed the service and $APP_DIR; kept $CONF_DIR and the spool in /var/lib/edge-mood" \
            "(--uninstall --purge removes them)"
    fi
    if have_systemd; then systemctl daemon-reload; fi
}

# ---------------------------------------------------------------------------------------------------
install_system_packages() {
    [ "$NO_APT" = 1 ] && return
    say "installing system packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends python3-venv python3-pip ca-certificates >/dev/null
    # picamera2 comes from Raspberry Pi OS's archive, built against its libcamera; pip cannot provide it.
    if apt-cache show python3-picamera2 >/dev/null 2>&1; then
        apt-get install -y -qq --no-install-recommends python3-picamera2 >/dev/null
    else
        say "warning: no python3-picamera2 in the apt sources (not Raspberry Pi OS?);" \
            "source \"picamera\" will not work, USB cameras, streams and files will"
    fi
}

ensure_group() {
    [ -n "$ROOT" ] && return
    getent group "$GROUP" >/dev/null || groupadd --system "$GROUP"
}

# Turns --source into a pip requirement; refuses the [quantize] extra (it pulls torch).
pip_requirement() {
    local spec=$1
    case $spec in
        *"["*) die "--source '$spec' names an extra; the daemon needs none, and [quantize] pulls torch" ;;
    esac
    if [ -e "$spec" ]; then
        (cd "$(dirname "$spec")" && printf '%s/%s\n' "$(pwd)" "$(basename "$spec")")
    elif [[ $spec =~ ^[0-9][0-9A-Za-z.+!-]*$ ]]; then
        printf 'edge-mood==%s\n' "$spec"
    else
        printf '%s\n' "$spec"
    fi
}

# Raspberry Pi OS Bookworm's picamera2 (and its simplejpeg) are built against the apt numpy 1.x:
# a pip numpy 2 in the venv would shadow it and break `import picamera2`. Keep the system numpy
# then, and an OpenCV wheel that still supports it (4.12 moved to numpy 2).
write_constraints() {
    local file=$1 numpy_version
    : >"$file"
    numpy_version=$("$PYTHON" -c 'import numpy; print(numpy.__version__)' 2>/dev/null || true)
    if [[ $numpy_version == 1.* ]]; then
        printf 'numpy==%s\nopencv-python-headless<4.12\n' "$numpy_version" >"$file"
        say "keeping the system numpy $numpy_version (picamera2 is built against it)"
    fi
}

# pip builds a source folder in place: as root that leaves root-owned build/ and *.egg-info in the user's
# checkout, and a later install would ship the stale modules in build/. So a clean copy is built instead.
make_clean_copy() {
    COPY=$(mktemp -d)
    tar -C "$1" --exclude=./.git --exclude=./.venv --exclude=./build --exclude='./*.egg-info' -cf - . |
        tar -C "$COPY" -xf - || die "cannot copy $1 to $COPY to build it"
}

install_venv() {
    local requirement constraints
    requirement=$(pip_requirement "$SOURCE")
    COPY=""
    if [ -d "$requirement" ]; then
        make_clean_copy "$requirement"
        requirement=$COPY
    fi
    mkdir -p "$ROOT$APP_DIR"
    if [ ! -x "$ROOT$VENV/bin/python" ]; then
        say "creating $VENV (with system site-packages, for picamera2)"
        "$PYTHON" -m venv --system-site-packages "$ROOT$VENV"
    fi
    constraints=$(mktemp)
    write_constraints "$constraints"
    say "installing $requirement"
    local installed=0
    "$ROOT$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade \
        --constraint "$constraints" "${PIP_OPTS[@]}" "$requirement" && installed=1
    rm -f "$constraints"
    [ -z "$COPY" ] || rm -rf "$COPY"
    [ "$installed" = 1 ] || die "pip could not install $requirement (its output is above)"
    "$ROOT$VENV/bin/edge" --version >/dev/null || die "the installed 'edge' command does not start"
}

# Puts the checked YuNet model in place, from --yunet-file or the pinned URL, with the same Python code the
# daemon uses on first use (standard library only, so the system Python runs it before the venv exists).
install_yunet() {
    local args=(--dir "$ROOT$MODEL_DIR") out
    [ -n "$YUNET_FILE" ] && args+=(--file "$YUNET_FILE")
    [ -n "$YUNET_URL" ] && args+=(--url "$YUNET_URL")
    [ -n "$YUNET_SHA256" ] && args+=(--sha256 "$YUNET_SHA256")
    [ -n "$YUNET_FILE" ] || say "fetching the YuNet face detector"
    if out=$(PYTHONPATH="$CHECKOUT" PYTHONDONTWRITEBYTECODE=1 "$PYTHON" -m edge.yunet_fetch "${args[@]}" 2>&1); then
        say "YuNet in place: ${out#"$ROOT"}"
        return
    fi
    # An upgrade without internet keeps the detector it has (the daemon finds any YuNet in the folder).
    local installed=("$ROOT$MODEL_DIR"/face_detection_yunet*.onnx)
    if [ -z "$YUNET_FILE" ] && [ -f "${installed[-1]}" ]; then
        say "warning: ${out%%$'\n'*}; keeping ${installed[-1]#"$ROOT"}"
        return
    fi
    [ -n "$YUNET_FILE" ] || out+=" (this installer's option: --yunet-file PATH)"
    die "$out"
}

# The expression model ships in the checkout's models/; a wheel or index install carries its own.
install_models() {
    local folder=$SOURCE
    [ -d "$folder/models" ] || { say "no models/ beside --source; the package's own model is used"; return; }
    local copied=0 file
    for file in "$folder"/models/*.onnx "$folder"/models/*.json; do
        [ -f "$file" ] || continue
        install -m 0644 "$file" "$ROOT$MODEL_DIR/"
        copied=$((copied + 1))
    done
    say "copied $copied model file(s) into $MODEL_DIR"
}

# Writes the commented example config with this device's settings, only when none exists.
install_config() {
    mkdir -p "$ROOT$CONF_DIR"
    if [ -e "$ROOT$CONF" ]; then
        say "keeping the existing $CONF"
    else
        local example tmp device_id
        example=$("$ROOT$VENV/bin/python" -c \
            'import edge, pathlib; print(pathlib.Path(edge.__file__).with_name("config.example.toml"))')
        [ -f "$example" ] || die "the installed package has no config.example.toml ($example)"
        tmp=$(mktemp "$ROOT$CONF_DIR/.config.XXXXXX")
        # The host name as a device id, made as the daemon makes one (pi.lan -> pi).
        device_id=$("$ROOT$VENV/bin/python" -c \
            'import sys; from edge.config import device_id_from_host; print(device_id_from_host(sys.argv[1]))' \
            "$(hostname)")
        # The Pi camera where picamera2 is installed (apt, Raspberry Pi OS), else the first V4L2 camera.
        source=/dev/video0
        "$ROOT$VENV/bin/python" -c 'import picamera2' 2>/dev/null && source=picamera
        "$ROOT$VENV/bin/python" - "$example" "$tmp" "$device_id" "$source" <<'PY'
import re
import sys

example, out, hostname, source = sys.argv[1:5]
settings = {("mqtt", "device_id"): hostname, ("source", "uri"): source}
section, lines = "", []
for line in open(example, encoding="utf-8").read().splitlines():
    header = re.match(r"\s*\[([A-Za-z0-9_.-]+)\]\s*$", line)
    if header:
        section = header.group(1)
    key = re.match(r"\s*([A-Za-z0-9_]+)\s*=", line)
    if key and (section, key.group(1)) in settings:
        value = settings.pop((section, key.group(1)))
        line = f'{key.group(1)} = "{value}"  # set by install.sh'
    lines.append(line)
for (section, key), value in settings.items():  # keys the example lacks
    lines += ["", f"[{section}]", f'{key} = "{value}"  # set by install.sh']
open(out, "w", encoding="utf-8").write("\n".join(lines) + "\n")
PY
        mv "$tmp" "$ROOT$CONF"
        say "wrote $CONF (device id $device_id, camera $source); edit [source] and [mqtt] there"
    fi
    # Earlier versions pinned the detector's path, which a later install may name otherwise; the daemon
    # finds the YuNet in the model folder by itself.
    local pinned='^yunet_model = ".*"  # set by install.sh$'
    if grep -q "$pinned" "$ROOT$CONF"; then
        sed -i --follow-symlinks "s|$pinned|yunet_model = \"\"|" "$ROOT$CONF"
        say "the YuNet path an earlier version pinned in $CONF is emptied (the daemon finds it by itself)"
    fi
    # It may hold MQTT credentials: readable by root and the service's group only.
    chmod 0640 "$ROOT$CONF"
    if [ -z "$ROOT" ]; then chown root:"$GROUP" "$ROOT$CONF"; fi
}

install_unit() {
    mkdir -p "$ROOT$UNIT_DIR"
    install -m 0644 "$SCRIPT_DIR/$SERVICE.service" "$ROOT$UNIT_DIR/$SERVICE.service"
    say "installed $UNIT_DIR/$SERVICE.service"
    # Reloaded also with --no-start: else systemd keeps the old unit until the next boot or reload.
    if have_systemd; then systemctl daemon-reload; fi
    if [ "$NO_START" = 1 ] || ! have_systemd; then
        say "not starting it (--no-start or no running systemd); later: sudo systemctl enable --now $SERVICE"
        return
    fi
    systemctl enable "$SERVICE.service" >/dev/null 2>&1
    # restart, not start: a second run must pick up the new code. It returns once READY=1 came.
    say "starting it (ready after the first camera frame; gives up after 2 minutes)"
    systemctl restart "$SERVICE.service" ||
        die "the service did not start; see: journalctl -u $SERVICE -n 50 --no-pager"
    say "service running: $(systemctl is-active "$SERVICE.service")"
}

# ---------------------------------------------------------------------------------------------------
if [ "$UNINSTALL" = 1 ]; then
    uninstall
    exit 0
fi

umask 022
# A detector file brought along is checked first: a wrong file stops the install before anything else
# changes. A download needs the CA certificates that apt installs on a minimal system.
if [ -n "$YUNET_FILE" ]; then
    install_yunet
    install_system_packages
else
    install_system_packages
    install_yunet
fi
ensure_group
install_venv
install_models
install_config
install_unit

cat <<EOF

edge-mood is installed.
  config:   $CONF   (then: sudo systemctl restart $SERVICE)
  check:    sudo $VENV/bin/edge check --config $CONF
  logs:     journalctl -u $SERVICE -f
  events:   sudo $VENV/bin/edge tail --config $CONF   (a broker with per-device logins: add --set
            mqtt.username=<a reader login> --set mqtt.password_file=<its file>; see docs/reliability.md)
  remove:   sudo $0 --uninstall   (add --purge to delete config and spool too)
EOF
