#!/usr/bin/env bash
# Proof that edge-mood installs and runs on 64-bit ARM (Raspberry Pi OS Bookworm's userland), on an
# x86 machine: a Debian Bookworm arm64 root built with debootstrap, run under qemu-user emulation.
#
# Inside the arm64 root it runs the real installer (systemd/install.sh, pip pulling the aarch64
# wheels), checks that onnxruntime and OpenCV load and that YuNet finds faces in a photo, then runs
# `edge run --once` on a short video against a mosquitto broker on this host's loopback and counts
# the events that arrive. Prints one line per stage with its wall time.
#
#   sudo bench/arm64_qemu.sh [--root DIR] [--photo JPG] [--yunet ONNX] [--model ONNX]
#
# --model: an expression model (.onnx with its .json card beside it) to use instead of the one
# shipped in models/.
#
# Needs: root, debootstrap, qemu-user-static with binfmt_misc (apt-get install debootstrap
# qemu-user-static binfmt-support), mosquitto and mosquitto_sub, network to the Debian and PyPI
# archives. The root is cached in --root (default /work/arm64-root); delete it to start over.
# The daemon runs as root in the chroot: this checks the arm64 build, not the systemd sandbox.
# A stand-in only for the Pi's camera: frames come from a video file made from the photo.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SHARED=$(dirname "$REPO")/shared
CACHE=/work/arm64-root
PHOTO=$SHARED/data/photos/12_angry_men.jpg
YUNET=$SHARED/models/face_detection_yunet_2026may.onnx
MODEL=""
MIRROR=http://deb.debian.org/debian
while [ $# -gt 0 ]; do
    case $1 in
        --root) CACHE=$2; shift ;;
        --photo) PHOTO=$2; shift ;;
        --yunet) YUNET=$2; shift ;;
        --model) MODEL=$2; shift ;;
        -h | --help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
ROOTFS=$CACHE/rootfs

fail() { echo "arm64: FAIL: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "run as root (debootstrap and chroot)"
for tool in debootstrap mosquitto_sub; do command -v "$tool" >/dev/null || fail "missing $tool"; done
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
[ -x "$MOSQUITTO" ] || fail "missing mosquitto"
[ -f "$PHOTO" ] || fail "no photo at $PHOTO (--photo)"
[ -f "$YUNET" ] || fail "no YuNet model at $YUNET (--yunet)"
if [ -n "$MODEL" ]; then
    if [ ! -f "$MODEL" ] || [ ! -f "${MODEL%.onnx}.json" ]; then
        fail "--model needs $MODEL and its card ${MODEL%.onnx}.json"
    fi
elif ! compgen -G "$REPO/models/*.onnx" >/dev/null; then
    fail "no expression model in $REPO/models/; pass --model PATH.onnx (with its .json card)"
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    update-binfmts --enable qemu-aarch64 || fail "cannot register qemu-aarch64 with binfmt_misc"
fi

T0=$(date +%s)
stage_start=$T0
stage() {
    local now
    now=$(date +%s)
    printf 'arm64: %-58s %4ds\n' "$1" $((now - stage_start))
    stage_start=$now
}

# qemu-user shows the host's x86 /proc/cpuinfo, which the ARM cpuinfo library inside onnxruntime
# misreads and crashes on at import (a real Pi has no such problem); present a Raspberry Pi 4's
# description (Cortex-A72, part 0xd08) for as many cores as /sys lists instead.
CPUINFO=$CACHE/cpuinfo
mkdir -p "$CACHE"
for ((cpu = 0; cpu < $(nproc --all); cpu++)); do
    printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n' "$cpu"
    printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\n'
    printf 'CPU revision\t: 3\n\n'
done >"$CPUINFO"
printf 'Hardware\t: BCM2835\nModel\t\t: Raspberry Pi 4 Model B (emulated)\n' >>"$CPUINFO"

# Runs a command inside the arm64 root with /proc, /sys and /dev mounted in a private mount
# namespace, so nothing is left mounted when it ends.
in_root() {
    # shellcheck disable=SC2016  # expanded by the inner shell
    unshare --mount --propagation private bash -c '
        root=$1 cpuinfo=$2; shift 2
        mount -t proc proc "$root/proc"
        mount --bind "$cpuinfo" "$root/proc/cpuinfo"
        mount --rbind /sys "$root/sys"
        mount --rbind /dev "$root/dev"
        cp -L /etc/resolv.conf "$root/etc/resolv.conf"
        exec chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"
    ' in_root "$ROOTFS" "$CPUINFO" "$@"
}

# 1. Debian Bookworm arm64 userland (what Raspberry Pi OS Bookworm 64-bit is built on).
if [ ! -f "$ROOTFS/.debootstrap-done" ]; then
    rm -rf "$ROOTFS"
    mkdir -p "$CACHE"
    debootstrap --arch=arm64 --variant=minbase \
        --include=python3,python3-venv,python3-pip,ca-certificates,libgomp1 \
        bookworm "$ROOTFS" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 ||
        fail "debootstrap failed, see $CACHE/debootstrap.log"
    touch "$ROOTFS/.debootstrap-done"
fi
[ "$(in_root uname -m)" = aarch64 ] || fail "the root does not run as aarch64"
stage "rootfs ready (debootstrap bookworm arm64, cached)"

# 2. Raspberry Pi OS puts numpy 1.x there from apt (picamera2 needs it); do the same so the
#    installer's numpy pinning is exercised. python3-picamera2 itself is not in Debian.
if [ ! -f "$ROOTFS/usr/lib/python3/dist-packages/numpy/__init__.py" ]; then
    in_root apt-get update -qq
    in_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-numpy \
        >/dev/null
fi
stage "system numpy $(in_root python3 -c 'import numpy; print(numpy.__version__)') (as on Pi OS)"

# The host's local CAs (e.g. of a TLS-inspecting proxy) so pip inside trusts what the host trusts.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$ROOTFS/usr/local/share/ca-certificates/"
    in_root update-ca-certificates >/dev/null 2>&1
fi

# 3. The real installer, from a copy of this checkout (tracked and new files, as committed or not),
#    on a clean slate: the previous run's install is purged first.
if [ -x "$ROOTFS/src/edge-mood/systemd/install.sh" ]; then
    in_root /src/edge-mood/systemd/install.sh --uninstall --purge >/dev/null
fi
rm -rf "$ROOTFS/src"
mkdir -p "$ROOTFS/src/edge-mood"
git -C "$REPO" ls-files -z --cached --others --exclude-standard |
    (cd "$REPO" && xargs -0 tar cf - --ignore-failed-read 2>/dev/null) | tar xf - -C "$ROOTFS/src/edge-mood"
cp "$YUNET" "$ROOTFS/src/"
cp "$PHOTO" "$ROOTFS/src/photo.jpg"
model_args=()
if [ -n "$MODEL" ]; then
    mkdir -p "$ROOTFS/src/model"
    cp "$MODEL" "${MODEL%.onnx}.json" "$ROOTFS/src/model/"
    for variant in "${MODEL%.onnx}".*.onnx; do [ -f "$variant" ] && cp "$variant" "$ROOTFS/src/model/"; done
    model_args=(--model "/src/model/$(basename "$MODEL")")
fi
in_root /src/edge-mood/systemd/install.sh --no-apt --no-start \
    --yunet-file "/src/$(basename "$YUNET")" --yunet-sha256 "$(sha256sum "$YUNET" | cut -c1-64)" |
    sed 's/^/    /'
stage "systemd/install.sh in the arm64 root (pip under emulation)"
in_root /opt/edge-mood/venv/bin/python -m pip list --disable-pip-version-check 2>/dev/null |
    grep -iE '^(numpy|onnxruntime|opencv-python-headless|paho-mqtt|edge-mood) ' | sed 's/^/    /'

# 4. The native parts load and work: onnxruntime, OpenCV, YuNet on a real photo.
in_root /opt/edge-mood/venv/bin/python - <<'PY' | sed 's/^/    /'
import glob
import platform

import cv2
import numpy
import onnxruntime

print("machine", platform.machine(), "python", platform.python_version(), "numpy", numpy.__version__,
      "cv2", cv2.__version__, "onnxruntime", onnxruntime.__version__, onnxruntime.get_available_providers())
image = cv2.imread("/src/photo.jpg")
model = glob.glob("/opt/edge-mood/models/face_detection_yunet*.onnx")[0]
scale = 640 / image.shape[1]
small = cv2.resize(image, None, fx=scale, fy=scale)
detector = cv2.FaceDetectorYN.create(model, "", (small.shape[1], small.shape[0]), 0.7)
_, faces = detector.detect(small)
count = 0 if faces is None else len(faces)
print(f"YuNet found {count} faces in photo.jpg {image.shape[1]}x{image.shape[0]}")
assert count > 0, "YuNet found no face"
PY
stage "onnxruntime + cv2 import, YuNet detects faces"

# 5. End to end: a short clip through `edge run --once` to a broker on the host.
in_root /opt/edge-mood/venv/bin/python - <<'PY'
import cv2

image = cv2.imread("/src/photo.jpg")
image = cv2.resize(image, (640, 640 * image.shape[0] // image.shape[1]))
out = cv2.VideoWriter("/src/clip.avi", cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (image.shape[1], image.shape[0]))
for _ in range(30):  # 3 s at 10 fps: long enough for faces to be announced and to settle
    out.write(image)
out.release()
PY
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
work=$(mktemp -d)
"$MOSQUITTO" -p "$port" >"$work/mosquitto.log" 2>&1 &
broker=$!
sub=""
cleanup() {
    if [ -n "$sub" ]; then kill "$sub" 2>/dev/null || true; fi
    kill "$broker" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
sleep 1
mosquitto_sub -h 127.0.0.1 -p "$port" -v -t 'edge-mood/+/events' -t 'edge-mood/+/status' >"$work/received" &
sub=$!
sleep 1
run_start=$(date +%s)
set +e
in_root /opt/edge-mood/venv/bin/edge run --once --config /etc/edge-mood/config.toml \
    --source /src/clip.avi --broker "127.0.0.1:$port" --device-id arm64-qemu "${model_args[@]}" 2>&1 |
    sed 's/^/    /'
status=${PIPESTATUS[0]}
set -e
run_s=$(($(date +%s) - run_start))
sleep 2
events=$(grep -c '^edge-mood/arm64-qemu/events ' "$work/received" || true)
echo "    received on the host broker: $events events"
{ grep '^edge-mood/arm64-qemu/events ' "$work/received" || true; } | head -3 | cut -c1-240 | sed 's/^/      /'
{ grep '^edge-mood/arm64-qemu/status ' "$work/received" || true; } | sed 's/^/      /'
[ "$status" = 0 ] || fail "edge run exited $status"
[ "$events" -gt 0 ] || fail "no event reached the broker"
stage "edge run --once: exit $status, $events events in ${run_s}s"

echo "arm64: PASS in $(($(date +%s) - T0))s"
