#!/bin/sh
# tillplug .deb, after removal: the version folders and links under /opt/tillplug are the postinst's,
# not dpkg's, so they go here.  The state (/var/lib/tillplug) and the config (/etc/tillplug) stay.
set -e
case "$1" in
    remove | purge) rm -rf /opt/tillplug ;;
esac
exit 0
