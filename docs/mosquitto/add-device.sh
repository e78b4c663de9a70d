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
DISCOVERY_PREFIX=${EDGE_MOOD_DISCOVERY_PREFIX:-homeassistant}

die() { printf 'add-device: error: %s\n' "$*" >&2; exit 2; }

device=${1:-}
[ -n "$device" ] || die "usage: $0 DEVICE_ID"
[[ $device =~ ^[a-z0-9_]+$ ]] ||
    die "device id '$device': use lowercase letters, digits and _ (it is also the Home Assistant id)"
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

if ! grep -qx "user $device" "$ACL"; then
    printf '\nuser %s\ntopic write %s/sensor/%s_mood/config\ntopic write %s/sensor/%s_faces/config\n' \
        "$device" "$DISCOVERY_PREFIX" "$device" "$DISCOVERY_PREFIX" "$device" >>"$ACL"
fi
printf 'add-device: %s can log in and write edge-mood/%s/*; reload mosquitto to apply\n' "$device" "$device"
