#!/usr/bin/env bash
# The real unit under a real systemd: boots a Debian Bookworm container (systemd 252, as on Raspberry
# Pi OS Bookworm) with systemd-nspawn, installs edge-mood with systemd/install.sh, and checks what
# `systemd-analyze` cannot: that the daemon starts and publishes under the full sandbox (DynamicUser,
# seccomp filter, MemoryDenyWriteExecute, no capabilities), that a wedged camera trips the watchdog, which
# stops the daemon cleanly (no stack dump) before systemd restarts it, that `systemctl stop` ends it cleanly
# with a retained "offline", and that uninstall/purge remove it. Prints one line per stage with its wall time.
#
#   sudo bench/systemd_nspawn.sh [--root DIR] [--model ONNX]
#
# Needs: root, debootstrap, systemd-nspawn (apt-get install debootstrap systemd-container), network to the
# Debian and PyPI archives. The container shares this machine's network; it runs mosquitto on 127.0.0.1:1883,
# so nothing else may listen there. A stand-in only for the Pi's camera: bench/picamera2_standin.py, put into
# the installed venv, hands out a photo's grey frames and, while its `pause` file exists, never returns from
# capture_array, as a wedged camera does. The container root is cached in --root (default /work/amd64-root).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SHARED=$(dirname "$REPO")/shared
CACHE=/work/amd64-root
MODEL=""
PHOTO=$SHARED/data/photos/12_angry_men.jpg
YUNET=$SHARED/models/face_detection_yunet_2026may.onnx
MIRROR=http://deb.debian.org/debian
while [ $# -gt 0 ]; do
    case $1 in
        --root) CACHE=$2; shift ;;
        --model) MODEL=$2; shift ;;
        -h | --help) sed -n '2,15p' "$0"; exit 0 ;;
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
cleanup() {
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

# 3. Install from a copy of this checkout, then point the config at the stand-in camera (and the model).
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
# The stand-in camera (bench/picamera2_standin.py) in the installed venv, showing the photo without end.
site=$(in_box /opt/edge-mood/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
standin=$site/picamera2
mkdir -p "$ROOTFS$standin"
cp "$REPO/bench/picamera2_standin.py" "$ROOTFS$standin/__init__.py"
cp "$PHOTO" "$ROOTFS$standin/photo.jpg"
in_box /opt/edge-mood/venv/bin/python -c "import cv2, numpy as np
grey = cv2.resize(cv2.imread('$standin/photo.jpg', cv2.IMREAD_GRAYSCALE), (640, 480))
np.save('$standin/frames.npy', np.stack([grey, grey]))"
echo '{"hold": 1, "gap": 0}' >"$ROOTFS$standin/schedule.json"
in_box sed -i "s#^uri = .*#uri = \"picamera\"#; $model_setting" /etc/edge-mood/config.toml
stage "systemd/install.sh --no-start, config edited"

# 4. Start it as a user would; it must publish under the sandbox.
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

# 5. The camera wedges: the pings stop, the watchdog (WatchdogSec=30s) stops the daemon cleanly, systemd
# restarts it, and once the camera works again it is active.
touch "$ROOTFS$standin/pause"
for _ in $(seq 120); do
    [ "$(in_box systemctl show -p NRestarts --value edge-mood)" -ge 1 ] && break
    sleep 1
done
rm -f "$ROOTFS$standin/pause"
journal=$(in_box journalctl -b -u edge-mood --no-pager -o cat)
grep -E 'no frame for|Watchdog timeout|received SIGTERM|Fatal Python error|Traceback|Failed with result' \
    <<<"$journal" | sed 's/^/    /' || true
[ "$(in_box systemctl show -p NRestarts --value edge-mood)" -ge 1 ] || fail "the watchdog did not restart it"
grep -q "Failed with result 'watchdog'" <<<"$journal" || fail "no watchdog result in the journal"
grep -q "received SIGTERM after frames stopped; shutting down" <<<"$journal" || fail "no clean stop on the watchdog"
! grep -qE "Fatal Python error|Traceback" <<<"$journal" || fail "a stack dump in the journal"
for _ in $(seq 60); do
    [ "$(in_box systemctl is-active edge-mood)" = active ] && break
    sleep 1
done
[ "$(in_box systemctl is-active edge-mood)" = active ] || fail "not active again after the camera came back"
stage "wedged camera: watchdog stops it cleanly, restart, active again"

# 6. systemctl stop: exit 0 and a retained "offline".
in_box systemctl stop edge-mood
result=$(in_box systemctl show -p Result -p ExecMainStatus edge-mood | tr '\n' ' ')
echo "    $result"
[[ $result == *"Result=success"* && $result == *"ExecMainStatus=0"* ]] || fail "unclean stop: $result"
status=$(timeout 10 nsenter -t "$init" -a mosquitto_sub -h localhost -t "edge-mood/$MACHINE/status" -C 1 -W 5 || true)
[ "$status" = offline ] || fail "retained status is '$status', not offline"
stage "systemctl stop: exit 0, retained offline"

# 7. Uninstall keeps config and spool; purge removes them.
in_box /root/edge-mood/systemd/uninstall.sh | sed 's/^/    /'
in_box test -f /etc/edge-mood/config.toml || fail "uninstall removed the config"
in_box test -d /var/lib/private/edge-mood || fail "uninstall removed the spool"
in_box /root/edge-mood/systemd/uninstall.sh --purge | sed 's/^/    /'
in_box test ! -e /etc/edge-mood -a ! -e /var/lib/private/edge-mood -a ! -e /opt/edge-mood || fail "purge left files"
stage "uninstall keeps config + spool, --purge removes them"

echo "nspawn: PASS in $(($(date +%s) - T0))s"
