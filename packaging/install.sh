#!/bin/sh
# Install tillplug from this wheelhouse, with no package index: a venv in /opt/tillplug/<version>
# (its own folder, as the .deb makes it; `current` points at it), /usr/local/bin/tillplug, then
# `tillplug install` (user, folders, udev rules, systemd unit).  Restart the service yourself
# when `tillplug ready-to-restart` says it is safe.
#   sudo ./install.sh [PYTHON]      (PYTHON: an interpreter >= 3.11, default python3)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
python=${1:-python3}
root=/opt/tillplug
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "tillplug needs Python 3.11 or newer" >&2; exit 1; }
wheel=$(ls "$here"/wheels/tillplug-*.whl | head -n 1)
version=$(basename "$wheel" | cut -d- -f2)
old=$(readlink "$root/current" 2>/dev/null || true)
mkdir -p "$root"
if [ ! -x "$root/$version/bin/tillplug" ]; then
    "$python" -m venv "$root/$version"
    "$root/$version/bin/pip" install --quiet --no-index --find-links "$here/wheels" "tillplug==$version"
fi
ln -sfn "$version" "$root/.current.new" && mv -T "$root/.current.new" "$root/current"
if [ -n "$old" ] && [ "$old" != "$version" ]; then
    ln -sfn "$old" "$root/.previous.new" && mv -T "$root/.previous.new" "$root/previous"
fi
ln -sf "$root/current/bin/tillplug" /usr/local/bin/tillplug
/usr/local/bin/tillplug install
echo "tillplug $version installed in $root/$version; next: edit /etc/tillplug/tillplug.toml, then tillplug check-config"
