#!/usr/bin/env bash
# Give one edge-mood device its own mosquitto login and its Home Assistant discovery topics in the ACL.
#
#   sudo docs/mosquitto/add-device.sh livingroom      asks for the device's new password twice
#
# Then set mqtt.username = mqtt.device_id = livingroom and the password (mqtt.password_file) on that
# device, and reload mosquitto: `sudo systemctl reload mosquitto`. Running it again changes the password.
set -euo pipefail

PASSWD=${MOSQUITTO_PASSWD_FILE:-/etc/mosquitto/passwd}
ACL=${MOSQUITTO_ACL_FILE:-/etc/mosquitto/edge-mood.acl}
PREFIX=${EDGE_MOOD_TOPIC_PREFIX:-edge-mood}                   # mqtt.prefix of the devices
DISCOVERY_PREFIX=${EDGE_MOOD_DISCOVERY_PREFIX:-homeassistant}  # mqtt.discovery_prefix

die() { printf 'add-device: error: %s\n' "$*" >&2; exit 2; }

device=${1:-}
[ -n "$device" ] || die "usage: $0 DEVICE_ID"
# The device ids the installer makes from host names (edge.config.device_id_from_host), in ASCII.
[[ $device =~ ^[A-Za-z0-9_-]+$ ]] || die "device id '$device': use letters, digits, - and _"
case $device in
    homeassistant | consumer) die "'$device' is a consumer login in $ACL; pick another device id" ;;
esac
[ -f "$ACL" ] || die "$ACL not found; copy edge-mood.acl there first"
command -v mosquitto_passwd >/dev/null || die "mosquitto_passwd not found (apt install mosquitto)"

create=()
[ -f "$PASSWD" ] || create=(-c)
if [ -n "${EDGE_MOOD_DEVICE_PASSWORD:-}" ]; then  # for scripts; interactive use asks instead
    mosquitto_passwd "${create[@]}" -b "$PASSWD" "$device" "$EDGE_MOOD_DEVICE_PASSWORD"
else
    mosquitto_passwd "${create[@]}" "$PASSWD" "$device"
fi

# The node id names the device's discovery topics: edge_mood_<slug>_<sha256 of "<prefix>/<device>", 8 hex>,
# the slug as edge.contract.id_slug makes it (lowercase, runs of other characters than a-z and 0-9 as one _).
slug=$(printf '%s' "$device" | tr '[:upper:]' '[:lower:]' | sed -E 's/[^a-z0-9]+/_/g; s/^_+//; s/_+$//')
digest=$(printf '%s' "$PREFIX/$device" | sha256sum | cut -c1-8)
node="edge_mood_${slug:-edge_mood}_${digest}"
topic="$DISCOVERY_PREFIX/+/$node/+/config"
if ! grep -qx "user $device" "$ACL"; then
    printf '\nuser %s\ntopic readwrite %s\n' "$device" "$topic" >>"$ACL"
else  # added by an earlier version, with write only: its login could not clear its configs
    sed -i "s|^topic write $topic\$|topic readwrite $topic|" "$ACL"
fi
printf 'add-device: %s can log in and write edge-mood/%s/*; reload mosquitto to apply\n' "$device" "$device"
