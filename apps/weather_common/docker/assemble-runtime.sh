#!/bin/sh
# Assemble a minimal root filesystem for the app images, inside the BUILD stage of a
# Dockerfile (a Debian trixie image with Python 3: Docker Hub's python:3.13-slim-trixie,
# Python under /usr/local, or Debian's python3 under /usr). The final stage is
# `FROM scratch` + `COPY --from=build /rootfs/ /`: only the Python runtime, the shared
# libraries it and the installed packages really load, and the app's packages.
#
#   assemble-runtime.sh /rootfs [PACKAGES_DIR]
#
# Expects the app's packages already installed (pip --target) under
# /rootfs/PACKAGES_DIR (default /app/site-packages), a directory the runtime image puts
# on PYTHONPATH, so the same place works whatever the interpreter's own site directory.
# The interpreter, its standard library and its prefix are asked of python3 itself
# (sys.executable, sysconfig), and copied to the same paths. Creates user/group "app"
# (10001:10001).
set -eu
R="$1"
PKGS="${2:-/app/site-packages}"
# shellcheck disable=SC2046  # four words, no spaces in them
set -- $(python3 -c 'import os, sys, sysconfig
print(os.path.realpath(sys.executable), os.path.dirname(sys.executable),
      sysconfig.get_path("stdlib"), os.path.join(sysconfig.get_path("platstdlib"), "lib-dynload"))')
PYBIN="$1"        # e.g. /usr/local/bin/python3.13 (Docker Hub) or /usr/bin/python3.13 (Debian)
BINDIR="$2"       # where `python3` is: /usr/local/bin or /usr/bin
STD="$3"          # the standard library: /usr/local/lib/python3.13 or /usr/lib/python3.13
DYNLOAD="$4"      # its extension modules
VER="$(basename "$PYBIN")"            # python3.13

mkdir -p "$R$BINDIR" "$R$(dirname "$PYBIN")" "$R$(dirname "$STD")" "$R/etc" "$R/app" "$R/tmp" "$R/run/secrets"
chmod 1777 "$R/tmp"
cp -a "$PYBIN" "$R$PYBIN"
[ -e "$R$BINDIR/python3" ] || ln -s "$PYBIN" "$R$BINDIR/python3"

# The standard library, without what a headless server never imports (and without the
# packages of the base image's own site directory: the app's are in PKGS).
cp -a "$STD" "$R$(dirname "$STD")/"
for d in test idlelib tkinter turtledemo ensurepip lib2to3 pydoc_data sqlite3 curses dbm \
         site-packages dist-packages "config-${VER#python}"-*; do
  rm -rf "$R$STD/$d"
done
for m in _sqlite3 readline _curses _curses_panel _dbm _gdbm _tkinter; do
  rm -f "$R$DYNLOAD"/"$m".cpython-*.so
done
rm -f "$R$STD"/EXTERNALLY-MANAGED
rm -rf "$R$PKGS/bin"
find "$R$PKGS" -name 'tests' -type d -prune -exec rm -rf {} +

# /lib64 and /lib are symlinks into /usr on trixie (merged /usr): create the links first
for l in /lib /lib64; do
  if [ -L "$l" ] && [ ! -e "$R$l" ]; then mkdir -p "$R$(readlink -f "$l")"; ln -s "$(readlink "$l")" "$R$l"; fi
done

# Shared libraries: whatever the interpreter (libpython too, when it is linked as a
# shared library, as in Docker Hub's image) and every extension module link against.
libs="$(
  { echo "$PYBIN"; find "$R$DYNLOAD" "$R$PKGS" -name '*.so*' -type f; } |
  while read -r f; do ldd "$f" 2>/dev/null; done |
  awk '/=> \// {print $3} /^\t\/.*ld-linux/ {print $1}' | sort -u
)"
for lib in $libs; do
  real="$(readlink -f "$lib")"
  mkdir -p "$R$(dirname "$lib")" "$R$(dirname "$real")"
  [ -e "$R$real" ] || cp -a "$real" "$R$real"
  [ "$lib" = "$real" ] || [ -e "$R$lib" ] || ln -s "$real" "$R$lib"
done
# The loader's cache, so libraries outside its built-in directories (/usr/local/lib)
# are found without relying on the interpreter's RPATH.
if [ -e /etc/ld.so.conf ]; then
  cp -a /etc/ld.so.conf "$R/etc/"
  [ ! -d /etc/ld.so.conf.d ] || cp -a /etc/ld.so.conf.d "$R/etc/"
  ldconfig -r "$R"
fi

cat > "$R/etc/passwd" <<PASSWD
root:x:0:0:root:/root:/usr/sbin/nologin
app:x:10001:10001:app:/app:/usr/sbin/nologin
PASSWD
cat > "$R/etc/group" <<GROUP
root:x:0:
app:x:10001:
GROUP
echo "hosts: files dns" > "$R/etc/nsswitch.conf"
