#!/bin/sh
# Assemble a minimal root filesystem for the app images, inside the BUILD stage of a
# Dockerfile (a Debian trixie image with python3). The final stage is `FROM scratch` +
# `COPY --from=build /rootfs/ /`: only the Python runtime, the shared libraries it and
# the installed packages really load, and the app's site-packages.
#
#   assemble-runtime.sh /rootfs
#
# Expects the app's packages already installed (pip --target) under
# /rootfs/usr/lib/python3/dist-packages. Creates user/group "app" (10001:10001).
set -eu
R="$1"
PYBIN="$(readlink -f /usr/bin/python3)"
VER="$(basename "$PYBIN")"            # python3.13
STD="/usr/lib/$VER"

mkdir -p "$R/usr/bin" "$R/usr/lib" "$R/etc" "$R/app" "$R/tmp" "$R/run/secrets"
chmod 1777 "$R/tmp"
cp -a "$PYBIN" "$R/usr/bin/"
ln -sf "$VER" "$R/usr/bin/python3"

# The standard library, without what a headless server never imports.
cp -a "$STD" "$R/usr/lib/"
for d in test idlelib tkinter turtledemo ensurepip lib2to3 pydoc_data sqlite3 curses dbm \
         "config-${VER#python}"-*; do
  rm -rf "$R$STD/$d"
done
for m in _sqlite3 readline _curses _curses_panel _dbm _gdbm _tkinter; do
  rm -f "$R$STD"/lib-dynload/"$m".cpython-*.so
done
rm -f "$R$STD"/EXTERNALLY-MANAGED
rm -rf "$R/usr/lib/python3/dist-packages/bin"
find "$R/usr/lib/python3/dist-packages" -name 'tests' -type d -prune -exec rm -rf {} +

# /lib64 and /lib are symlinks into /usr on trixie (merged /usr): create the links first
for l in /lib /lib64; do
  if [ -L "$l" ] && [ ! -e "$R$l" ]; then mkdir -p "$R$(readlink -f "$l")"; ln -s "$(readlink "$l")" "$R$l"; fi
done

# Shared libraries: whatever the interpreter and every extension module link against.
libs="$(
  { echo "$PYBIN"; find "$R$STD/lib-dynload" "$R/usr/lib/python3/dist-packages" -name '*.so*' -type f; } |
  while read -r f; do ldd "$f" 2>/dev/null; done |
  awk '/=> \// {print $3} /^\t\/.*ld-linux/ {print $1}' | sort -u
)"
for lib in $libs; do
  real="$(readlink -f "$lib")"
  mkdir -p "$R$(dirname "$lib")" "$R$(dirname "$real")"
  [ -e "$R$real" ] || cp -a "$real" "$R$real"
  [ "$lib" = "$real" ] || [ -e "$R$lib" ] || ln -s "$real" "$R$lib"
done

cat > "$R/etc/passwd" <<PASSWD
root:x:0:0:root:/root:/usr/sbin/nologin
app:x:10001:10001:app:/app:/usr/sbin/nologin
PASSWD
cat > "$R/etc/group" <<GROUP
root:x:0:
app:x:10001:
GROUP
echo "hosts: files dns" > "$R/etc/nsswitch.conf"
