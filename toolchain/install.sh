#!/usr/bin/env bash
# Offline installer of a refitd edge bundle (run from the unpacked bundle directory, as root):
#
#   tar xzf refitd-<version>-linux-<arch>.tar.gz && sudo refitd-<version>-linux-<arch>/install.sh
#
# It makes a venv at /opt/refitd from the box's own python3 (3.9-3.12), installs the bundled wheels
# with `pip --no-index` (never touches the network), creates the `refitd` system user,
# /etc/refitd (config) and /var/lib/refitd (weight store), installs the systemd unit, enables it,
# and (re)starts the service when systemd is running; /usr/local/bin/refitd links to the CLI.
# Re-running it (same or newer bundle)
# upgrades the code in place and keeps the weight store and the config: a changed default config is
# written beside the live one as refitd.yaml.new.
#
# Options (all have REFITD_* environment equivalents):
#   --python PATH      interpreter for the venv (PYTHON; default python3, else python3.12..3.9)
#   --prefix DIR       venv location                   (REFITD_PREFIX, /opt/refitd)
#   --confdir DIR      configuration directory         (REFITD_CONFDIR, /etc/refitd)
#   --statedir DIR     state directory (weight store)  (REFITD_STATEDIR, /var/lib/refitd)
#   --unitdir DIR      systemd unit directory          (REFITD_UNITDIR, /etc/systemd/system)
#   --user NAME        service user                    (REFITD_USER, refitd)
#   --no-user          do not create the user or chown (scratch installs as a normal user)
#   --no-systemd       do not install the unit
#   --no-start         install and enable the unit, but do not (re)start the service
#   --neuware-lib DIR  where the box's MagicMind/CNRT libraries are, for a bundle that carries the
#                      MagicMind plugin (REFITD_NEUWARE_LIB; /mps/lib on aarch64 edge boxes,
#                      /usr/local/neuware/lib64 elsewhere)
# A bundle built with the MagicMind plugin (make bundle MM_PLUGIN=...) installs it next to
# librefit and opens the unit to the MLU device nodes (DeviceAllow=/dev/cambricon_ctl and each
# /dev/cambricon_dev*); a bundle without it leaves the unit's PrivateDevices=yes as it is.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
PYTHON=${PYTHON:-}
PREFIX=${REFITD_PREFIX:-/opt/refitd}
CONFDIR=${REFITD_CONFDIR:-/etc/refitd}
STATEDIR=${REFITD_STATEDIR:-/var/lib/refitd}
UNITDIR=${REFITD_UNITDIR:-/etc/systemd/system}
SVC_USER=${REFITD_USER:-refitd}
DO_USER=1 DO_SYSTEMD=1 DO_START=1
SVC_GROUP=${REFITD_GROUP:-refitd}
NEUWARE_LIB=${REFITD_NEUWARE_LIB:-}
while [ $# -gt 0 ]; do
  case $1 in
    --python) PYTHON=$2; shift ;;
    --prefix) PREFIX=$2; shift ;;
    --confdir) CONFDIR=$2; shift ;;
    --statedir) STATEDIR=$2; shift ;;
    --unitdir) UNITDIR=$2; shift ;;
    --user) SVC_USER=$2; shift ;;
    --no-user) DO_USER=0 ;;
    --no-systemd) DO_SYSTEMD=0 ;;
    --no-start) DO_START=0 ;;
    --neuware-lib) NEUWARE_LIB=$2; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

say() { echo "install.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }

# ---- the bundle ---------------------------------------------------------------------------
[ -f "$here/BUNDLE" ] || die "no BUNDLE file next to install.sh: run it from the unpacked bundle"
bundle_get() { sed -n "s/^$1=//p" "$here/BUNDLE" | head -1; }
VERSION=$(bundle_get version)
ARCH=$(bundle_get arch)
PYTHONS=$(bundle_get pythons)
WHEELS="$here/wheels"
[ -n "$VERSION" ] && [ -d "$WHEELS" ] || die "incomplete bundle (BUNDLE or wheels/ missing)"
machine=$(uname -m)
[ "$machine" = "$ARCH" ] || [ "$machine/$ARCH" = "arm64/aarch64" ] \
  || die "this bundle is for $ARCH, this machine is $machine"
if [ -f "$here/SHA256SUMS" ] && command -v sha256sum >/dev/null 2>&1; then
  (cd "$here" && sha256sum --quiet -c SHA256SUMS) || die "bundle files do not match SHA256SUMS"
fi

# ---- python ------------------------------------------------------------------------------------
pyver() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null; }
supported() { case " $PYTHONS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
if [ -z "$PYTHON" ]; then
  for cand in python3 python3.12 python3.11 python3.10 python3.9; do
    command -v "$cand" >/dev/null 2>&1 || continue
    v=$(pyver "$cand") || continue
    if supported "$v"; then PYTHON=$(command -v "$cand"); break; fi
  done
  [ -n "$PYTHON" ] || die "no python3 of version $PYTHONS found (Ubuntu 18.04/CentOS 7 ship 3.6:" \
    "install python3.9+ first and pass --python /path/to/python3.X)"
fi
PYV=$(pyver "$PYTHON") || die "$PYTHON does not run"
supported "$PYV" || die "$PYTHON is $PYV; this bundle has wheels for Python $PYTHONS"
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null \
  || die "$PYTHON lacks venv/ensurepip (Debian/Ubuntu: apt-get install python3-venv)"

if [ "$DO_USER" = 1 ]; then
  [ "$(id -u)" = 0 ] || die "run as root (or use --no-user and scratch directories)"
fi
case $PREFIX in /|/usr|/usr/local|/opt|/etc|/var|"") die "refusing prefix '$PREFIX'";; esac

# ---- user and directories ---------------------------------------------------------------------
if [ "$DO_USER" = 1 ]; then
  if ! getent passwd "$SVC_USER" >/dev/null; then
    nologin=/usr/sbin/nologin; [ -x $nologin ] || nologin=/sbin/nologin
    if command -v useradd >/dev/null 2>&1; then
      useradd --system --user-group --home-dir "$STATEDIR" --no-create-home \
              --shell "$nologin" --comment "refitd daemon" "$SVC_USER"
    else
      adduser -S -D -H -h "$STATEDIR" -s "$nologin" "$SVC_USER"   # busybox
    fi
    say "created system user $SVC_USER"
  fi
  SVC_GROUP=$(id -gn "$SVC_USER")
fi
mkdir -p "$CONFDIR" "$STATEDIR"
chmod 0750 "$CONFDIR" "$STATEDIR"
if [ "$DO_USER" = 1 ]; then
  # Only the top directories: the weight store under them is the daemon's and is left alone.
  chown "root:$SVC_GROUP" "$CONFDIR"
  chown "$SVC_USER:$SVC_GROUP" "$STATEDIR"
fi

# ---- venv + wheels (offline) --------------------------------------------------------------------
export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
pipi() { "$PREFIX/bin/python" -m pip install -q --no-index --find-links "$WHEELS" "$@"; }
if [ -x "$PREFIX/bin/python" ] && [ -f "$PREFIX/pyvenv.cfg" ] && [ "$(pyver "$PREFIX/bin/python")" = "$PYV" ]; then
  say "upgrading the venv at $PREFIX (Python $PYV)"
  fresh=0
else
  if [ -e "$PREFIX" ] && [ -n "$(ls -A "$PREFIX" 2>/dev/null)" ] && [ ! -f "$PREFIX/pyvenv.cfg" ]; then
    die "$PREFIX exists and is not a refitd venv; move it away first"
  fi
  say "creating the venv at $PREFIX with $PYTHON (Python $PYV)"
  "$PYTHON" -m venv --clear "$PREFIX"
  fresh=1
fi
# A bundled pip first (the distribution's may be too old for manylinux_2_17 tags), then refitd
# with its dependencies, then refitd itself again so a rebuilt bundle of the same version wins.
if ls "$WHEELS"/pip-*.whl >/dev/null 2>&1; then pipi --upgrade pip; fi
pipi --upgrade "refitd==$VERSION"
pipi --upgrade --force-reinstall --no-deps "refitd==$VERSION"
"$PREFIX/bin/python" - "$VERSION" <<'EOF'
import importlib.metadata as md, pathlib, sys
import cffi, refitd
want = sys.argv[1]
got = md.version("refitd")
assert got == want, "installed refitd %s, expected %s" % (got, want)
libs = sorted(pathlib.Path(refitd.__file__).parent.glob("librefit*.so*"))
assert libs, "no librefit shared library inside the refitd package"
cffi.FFI().dlopen(str(libs[0]))  # loads: right architecture, glibc new enough
print("install.sh: refitd %s installed, %s loads" % (got, libs[0].name), file=sys.stderr)
EOF
# The MagicMind plugin, only when the bundle carries one: next to librefit, which is on librefit's
# plugin search path (docs/engine.md); an older install's plugin goes when the bundle has none.
MM_PLUGIN=$(bundle_get magicmind_plugin)
pkgdir=$("$PREFIX/bin/python" -c 'import os, refitd; print(os.path.dirname(refitd.__file__))')
if [ -n "$MM_PLUGIN" ]; then
  [ -f "$here/$MM_PLUGIN" ] || die "BUNDLE names $MM_PLUGIN, which is not in the bundle"
  install -m 0755 "$here/$MM_PLUGIN" "$pkgdir/librefit_backend_magicmind.so"
  [ -n "$NEUWARE_LIB" ] || { [ "$ARCH" = aarch64 ] && NEUWARE_LIB=/mps/lib || NEUWARE_LIB=/usr/local/neuware/lib64; }
  say "installed the MagicMind backend plugin in $pkgdir (vendor libraries from $NEUWARE_LIB)"
else
  rm -f "$pkgdir/librefit_backend_magicmind.so"
fi

# The CLI on PATH for operators (real installs only; scratch installs leave /usr/local alone).
if [ "$DO_USER" = 1 ] && [ -d /usr/local/bin ]; then
  ln -sfn "$PREFIX/bin/refitd" /usr/local/bin/refitd
fi
mkdir -p "$PREFIX/share/doc/refitd"
for f in "$here"/doc/*; do [ -f "$f" ] && install -m 0644 "$f" "$PREFIX/share/doc/refitd/"; done

# ---- config -------------------------------------------------------------------------------------
conf="$CONFDIR/refitd.yaml"
new_conf=$(mktemp)
trap 'rm -f "$new_conf"' EXIT
if [ -f "$here/config/refitd.yaml" ]; then
  sed -e "s|/var/lib/refitd|$STATEDIR|g" "$here/config/refitd.yaml" >"$new_conf"
else
  # No shipped default: the daemon's own demo configuration with the box's paths.
  "$PREFIX/bin/python" - "$STATEDIR" >"$new_conf" <<'EOF'
import sys, yaml
from refitd.config import demo_config, config_to_dict
d = config_to_dict(demo_config(sys.argv[1]))
print("# refitd configuration (generated by install.sh from the demo configuration).")
print(yaml.safe_dump(d, sort_keys=False), end="")
EOF
fi
if [ ! -f "$conf" ]; then
  install -m 0640 "$new_conf" "$conf"
  say "installed the default config $conf"
elif ! cmp -s "$new_conf" "$conf"; then
  install -m 0640 "$new_conf" "$conf.new"
  say "kept $conf; the bundle's default is in $conf.new"
fi
[ "$DO_USER" = 1 ] && chown "root:$SVC_GROUP" "$conf" "$conf.new" 2>/dev/null || true

# The shipped config serves $STATEDIR/model.onnx: until the operator puts a model there, the
# bundled demo model (the seeds' 3x3 conv) stands in, so the service starts on a fresh box.
if [ ! -e "$STATEDIR/model.onnx" ]; then
  demo=$("$PREFIX/bin/python" -c 'import refitd, pathlib; print(pathlib.Path(refitd.__file__).parent / "demo" / "seed_conv.onnx")')
  if [ -f "$demo" ]; then
    install -m 0640 "$demo" "$STATEDIR/model.onnx"
    [ "$DO_USER" = 1 ] && chown "$SVC_USER:$SVC_GROUP" "$STATEDIR/model.onnx"
    say "no model yet: installed the demo model as $STATEDIR/model.onnx (replace it with yours)"
  fi
fi

# The config against this box, as the service's user (refitd check-config: the model opens, the
# directories are writable): a problem is reported before the service fails on it, not fatal.
check_user=$SVC_USER
[ "$DO_USER" = 1 ] || check_user=$(id -un)
if "$PREFIX/bin/refitd" check-config --user "$check_user" "$conf" >/dev/null; then
  say "config $conf checks out for user $check_user"
else
  say "the config has the problems above: fix $conf, then refitd check-config $conf"
fi

# ---- systemd ---------------------------------------------------------------------------------
# With the MagicMind plugin: the unit's PrivateDevices=yes becomes access to the MLU nodes only
# (the nodes present now, else /dev/cambricon_dev0; re-run install.sh after adding cards) and the
# vendor libraries' directory. Without it: the unit unchanged.
mlu_devices() {
  if [ -z "$MM_PLUGIN" ]; then cat; return; fi
  local nodes lines n
  nodes=$(ls -d /dev/cambricon_dev* 2>/dev/null || true)
  lines="PrivateDevices=no\nDevicePolicy=closed\nDeviceAllow=/dev/cambricon_ctl rw"
  for n in ${nodes:-/dev/cambricon_dev0}; do lines="$lines\nDeviceAllow=$n rw"; done
  lines="$lines\nEnvironment=LD_LIBRARY_PATH=$NEUWARE_LIB"
  sed -e "s|^PrivateDevices=yes\$|$lines|"
}
if [ "$DO_SYSTEMD" = 1 ]; then
  mkdir -p "$UNITDIR"
  sed -e "s|/opt/refitd/|$PREFIX/|g" -e "s|/etc/refitd/refitd.yaml|$conf|g" \
      -e "s|^User=refitd|User=$SVC_USER|" -e "s|^Group=refitd|Group=$SVC_GROUP|" \
      "$here/systemd/refitd.service" | mlu_devices >"$UNITDIR/refitd.service.tmp"
  chmod 0644 "$UNITDIR/refitd.service.tmp"
  mv -f "$UNITDIR/refitd.service.tmp" "$UNITDIR/refitd.service"
  # The user and directories for systemd-sysusers / systemd-tmpfiles (the real unit dir only).
  if [ "$UNITDIR" = /etc/systemd/system ]; then
    for kind in sysusers tmpfiles; do
      [ -f "$here/systemd/refitd.$kind.conf" ] || continue
      mkdir -p "/usr/lib/$kind.d"
      sed -e "s|/var/lib/refitd|$STATEDIR|g" -e "s|/etc/refitd|$CONFDIR|g" \
          -e "s|\brefitd refitd\b|$SVC_USER $SVC_GROUP|" -e "s|^u refitd |u $SVC_USER |" \
          "$here/systemd/refitd.$kind.conf" >"/usr/lib/$kind.d/refitd.conf"
      chmod 0644 "/usr/lib/$kind.d/refitd.conf"
    done
  fi
  # systemctl only for the real unit directory of a running systemd (never for scratch installs).
  if [ "$UNITDIR" = /etc/systemd/system ] && command -v systemctl >/dev/null 2>&1 \
     && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable refitd.service
    if [ "$DO_START" = 1 ]; then
      systemctl restart refitd.service && say "refitd.service (re)started" \
        || say "refitd.service failed to start: journalctl -u refitd"
    fi
  else
    # No running systemd (chroot, container, image build): enable by hand, as systemctl would.
    mkdir -p "$UNITDIR/multi-user.target.wants"
    ln -sfn ../refitd.service "$UNITDIR/multi-user.target.wants/refitd.service"
    say "systemd is not running here: unit installed and enabled, not started"
  fi
fi

{
  echo "version=$VERSION"; echo "arch=$ARCH"; echo "python=$PYV"
  echo "installed=$(date -u +%Y-%m-%dT%H:%M:%SZ)"; echo "fresh_venv=$fresh"
} >"$PREFIX/INSTALLED"
say "done: refitd $VERSION in $PREFIX (config $conf, state $STATEDIR)"
