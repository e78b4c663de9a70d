#!/usr/bin/env bash
# Remove the edge-mood service: same as `install.sh --uninstall`; add --purge to delete config and spool.
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/install.sh" --uninstall "$@"
