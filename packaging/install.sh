#!/bin/sh
# Install tillplug from this wheelhouse, with no package index: a venv in /opt/tillplug,
# /usr/local/bin/tillplug, then `tillplug install` (user, folders, udev rules, systemd unit).
#   sudo ./install.sh [PYTHON]      (PYTHON: an interpreter >= 3.11, default python3)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
python=${1:-python3}
prefix=/opt/tillplug
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "tillplug needs Python 3.11 or newer" >&2; exit 1; }
"$python" -m venv "$prefix"
"$prefix/bin/pip" install --quiet --no-index --find-links "$here/wheels" --upgrade tillplug
ln -sf "$prefix/bin/tillplug" /usr/local/bin/tillplug
/usr/local/bin/tillplug install
echo "tillplug installed in $prefix; next: edit /etc/tillplug/tillplug.toml, then tillplug check-config"
