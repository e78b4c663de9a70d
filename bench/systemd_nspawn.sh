#!/usr/bin/env bash
# The real unit under a real systemd: boots a Debian Bookworm container (systemd 252, as on Raspberry
# Pi OS Bookworm) with systemd-nspawn, installs edge-mood with systemd/install.sh, and checks what
# `systemd-analyze` cannot: that the daemon starts and publishes under the full sandbox (DynamicUser,
# seccomp filter, MemoryDenyWriteExecute, no capabilities), that a stalled camera trips the watchdog and
# systemd restarts the service, that `systemctl stop` ends it cleanly with a retained "offline", and that
# uninstall/purge remove it. Prints one line per stage with its wall time.
#
#   sudo bench/systemd_nspawn.sh [--root DIR] [--model ONNX]
#
# Needs: root, debootstrap, systemd-nspawn (apt-get install debootstrap systemd-container), a Python with
# OpenCV for the stand-in camera (PYTHON=..., default python3), network to the Debian and PyPI archives.
# The container shares this machine's network; it runs mosquitto on 127.0.0.1:1883, so nothing else may
# listen there. A stand-in only for the Pi's camera: an MJPEG stream of a photo served from this host,
# which the script pauses to stall the pipeline. The container root is cached in --root
# (default /work/amd64-root).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SHARED=$(dirname "$REPO")/shared
CACHE=/work/amd64-root
MODEL=""
PHOTO=$SHARED/data/photos/12_angry_men.jpg
YUNET=$SHARED/models/face_detection_yunet_2026may.onnx
PYTHON=${PYTHON:-python3}
MIRROR=http://deb.debian.org/debian
while [ $# -gt 0 ]; do
    case $1 in
        --root) CACHE=$2; shift ;;
        --model) MODEL=$2; shift ;;
        -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
ROOTFS=$CACHE/rootfs
MACHINE=edgebox

fail() { echo "nspawn: FAIL: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "run as root"
for tool in debootstrap systemd-nspawn nsenter; do command -v "$tool" >/dev/null || fail "missing $tool"; done
for file in "$PHOTO" "$YUNET"; do [ -f "$file" ] || fail "needs $file"; done
"$PYTHON" -c 'import cv2' 2>/dev/null || fail "$PYTHON has no OpenCV (set PYTHON=)"
if [ -n "$MODEL" ]; then
    [ -f "${MODEL%.onnx}.json" ] || fail "--model needs its card ${MODEL%.onnx}.json beside it"
elif ! compgen -G "$REPO/models/*.onnx" >/dev/null; then
    fail "no expression model in $REPO/models/; pass --model PATH.onnx (with its .json card)"
fi

T0=$(date +%s)
stage_start=$T0
stage() {
    local now
    now=$(date +%s)
    printf 'nspawn: %-62s %4ds\n' "$1" $((now - stage_start))
    stage_start=$now
}

# 1. A Debian Bookworm root with systemd, Python and mosquitto.
if [ ! -f "$ROOTFS/.debootstrap-done" ]; then
    rm -rf "$ROOTFS"
    mkdir -p "$CACHE"
    debootstrap --variant=minbase \
        --include=systemd,systemd-sysv,dbus,python3,python3-venv,python3-pip,ca-certificates,mosquitto,mosquitto-clients,procps \
        bookworm "$ROOTFS" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 || fail "debootstrap failed, see $CACHE/debootstrap.log"
    touch "$ROOTFS/.debootstrap-done"
fi
# What a Pi image has and minbase lacks; plus this host's local CAs (e.g. of a TLS-inspecting proxy).
echo "$MACHINE" >"$ROOTFS/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost\n127.0.1.1\t%s\n' "$MACHINE" >"$ROOTFS/etc/hosts"
cp -L /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$ROOTFS/usr/local/share/ca-certificates/"
    chroot "$ROOTFS" update-ca-certificates >/dev/null 2>&1
fi
# Leftovers of an earlier, failed run: an enabled service would delay this boot (no camera yet).
rm -rf "$ROOTFS/opt/edge-mood" "$ROOTFS/etc/edge-mood" "$ROOTFS/var/lib/private/edge-mood" \
    "$ROOTFS/var/lib/edge-mood" "$ROOTFS/etc/systemd/system/edge-mood.service" \
    "$ROOTFS/etc/systemd/system/multi-user.target.wants/edge-mood.service"
stage "container root ready (debootstrap bookworm amd64, cached)"

# 2. Boot it.
work=$(mktemp -d)
nspawn=""
camera=""
cleanup() {
    if [ -n "$camera" ]; then kill "$camera" 2>/dev/null || true; fi
    if [ -n "$nspawn" ]; then
        kill "$nspawn" 2>/dev/null || true  # SIGTERM: nspawn powers the container off
        wait "$nspawn" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
systemd-nspawn -D "$ROOTFS" -b --register=no --keep-unit --machine="$MACHINE" --console=pipe \
    >"$work/boot.log" 2>&1 &
nspawn=$!
init=""
for _ in $(seq 100); do
    init=$(pgrep -P "$nspawn" | head -1 || true)
    if [ -n "$init" ] && nsenter -t "$init" -a systemctl is-system-running --wait >/dev/null 2>&1; then break; fi
    sleep 0.3
done
[ -n "$init" ] || fail "the container did not boot: $(tail -5 "$work/boot.log")"
in_box() { nsenter -t "$init" -a /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }
stage "booted: $(in_box systemctl --version | head -1), $(in_box systemctl is-system-running)"

# 3. The stand-in camera: an MJPEG stream that stops sending while $work/pause exists.
port=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$PYTHON" - "$port" "$PHOTO" "$work/pause" >"$work/camera.log" 2>&1 <<'PY' &
import http.server, os, sys, time

import cv2

port, photo, pause = int(sys.argv[1]), sys.argv[2], sys.argv[3]
jpeg = cv2.imencode(".jpg", cv2.resize(cv2.imread(photo), (640, 360)))[1].tobytes()
part = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg) + jpeg + b"\r\n"


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        try:
            while True:
                if os.path.exists(pause):
                    time.sleep(0.1)
                    continue
                self.wfile.write(part)
                self.wfile.flush()
                time.sleep(0.1)
        except OSError:
            pass

    def log_message(self, *_):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
server.daemon_threads = True
server.serve_forever()
PY
camera=$!

# 4. Install from a copy of this checkout, then point the config at the stream (and the model).
rm -rf "$ROOTFS/root/edge-mood"
mkdir -p "$ROOTFS/root/edge-mood"
git -C "$REPO" ls-files -z --cached --others --exclude-standard |
    (cd "$REPO" && xargs -0 tar cf - --ignore-failed-read 2>/dev/null) | tar xf - -C "$ROOTFS/root/edge-mood"
cp "$YUNET" "$ROOTFS/root/"
in_box /root/edge-mood/systemd/install.sh --uninstall --purge >/dev/null
in_box /root/edge-mood/systemd/install.sh --no-start --yunet-file "/root/$(basename "$YUNET")" \
    --yunet-sha256 "$(sha256sum "$YUNET" | cut -c1-64)" | sed 's/^/    /'
model_setting=""
if [ -n "$MODEL" ]; then
    cp "$MODEL" "${MODEL%.onnx}".*onnx "${MODEL%.onnx}.json" "$ROOTFS/opt/edge-mood/models/" 2>/dev/null || true
    model_setting="s#^path = \"\"#path = \"/opt/edge-mood/models/$(basename "$MODEL")\"#;"
fi
in_box sed -i "s#^uri = .*#uri = \"http://127.0.0.1:$port/stream.mjpg\"#; $model_setting" /etc/edge-mood/config.toml
stage "systemd/install.sh --no-start, config edited"

# 5. Start it as a user would; it must publish under the sandbox.
in_box systemctl enable --now edge-mood.service 2>&1 | sed 's/^/    /' ||
    fail "did not start: $(in_box journalctl -u edge-mood -n 20 --no-pager -o cat)"
pid=$(in_box systemctl show -p MainPID --value edge-mood)
in_box grep -E '^(Uid|Groups|NoNewPrivs|Seccomp|CapEff|CapBnd):' "/proc/$pid/status" | tr -s '\t' ' ' | sed 's/^/    /'
field() { in_box grep "^$1:" "/proc/$pid/status" | tr -s ' \t' ' ' | cut -d' ' -f2; }
[ "$(field NoNewPrivs)" = 1 ] || fail "NoNewPrivs is not set"
[ "$(field Seccomp)" = 2 ] || fail "no seccomp filter"
[ "$(field Uid)" != 0 ] || fail "runs as root"
[ "$(field CapEff)" = 0000000000000000 ] || fail "has capabilities"
got=$(timeout 20 nsenter -t "$init" -a mosquitto_sub -h localhost -t 'edge-mood/#' -v -C 3 -W 15 || true)
echo "$got" | cut -c1-150 | sed 's/^/    /'
grep -q "^edge-mood/$MACHINE/status online" <<<"$got" || fail "no retained online status"
stage "enable --now: active, sandboxed, publishing"

# 6. The camera stalls: the watchdog fires (WatchdogSec=30s) and systemd restarts the daemon.
touch "$work/pause"
for _ in $(seq 120); do
    [ "$(in_box systemctl show -p NRestarts --value edge-mood)" -ge 1 ] && break
    sleep 1
done
rm -f "$work/pause"
journal=$(in_box journalctl -b -u edge-mood --no-pager -o cat)
grep -E 'no frame for|Watchdog timeout|Fatal Python error|Failed with result' <<<"$journal" | sed 's/^/    /'
[ "$(in_box systemctl show -p NRestarts --value edge-mood)" -ge 1 ] || fail "the watchdog did not restart it"
grep -q "Failed with result 'watchdog'" <<<"$journal" || fail "no watchdog result in the journal"
for _ in $(seq 60); do
    [ "$(in_box systemctl is-active edge-mood)" = active ] && break
    sleep 1
done
[ "$(in_box systemctl is-active edge-mood)" = active ] || fail "not active again after the camera came back"
stage "stalled camera: watchdog timeout, restart, active again"

# 7. systemctl stop: exit 0 and a retained "offline".
in_box systemctl stop edge-mood
result=$(in_box systemctl show -p Result -p ExecMainStatus edge-mood | tr '\n' ' ')
echo "    $result"
[[ $result == *"Result=success"* && $result == *"ExecMainStatus=0"* ]] || fail "unclean stop: $result"
status=$(timeout 10 nsenter -t "$init" -a mosquitto_sub -h localhost -t "edge-mood/$MACHINE/status" -C 1 -W 5 || true)
[ "$status" = offline ] || fail "retained status is '$status', not offline"
stage "systemctl stop: exit 0, retained offline"

# 8. Uninstall keeps config and spool; purge removes them.
in_box /root/edge-mood/systemd/uninstall.sh | sed 's/^/    /'
in_box test -f /etc/edge-mood/config.toml || fail "uninstall removed the config"
in_box test -d /var/lib/private/edge-mood || fail "uninstall removed the spool"
in_box /root/edge-mood/systemd/uninstall.sh --purge | sed 's/^/    /'
in_box test ! -e /etc/edge-mood -a ! -e /var/lib/private/edge-mood -a ! -e /opt/edge-mood || fail "purge left files"
stage "uninstall keeps config + spool, --purge removes them"

echo "nspawn: PASS in $(($(date +%s) - T0))s"
