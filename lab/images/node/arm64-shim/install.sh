#!/bin/sh
# Put the x86-64 iptables and runc (unpacked under /opt/x86 by the image's amd64 fetch
# stage, their libraries in /usr/lib/x86_64-linux-gnu) in front of the arm64 ones (see
# README.md). Runs at image build time inside the arm64 image.
set -eux
# The x86-64 programs' loader path; merged-/usr, as on an amd64 system.
[ -e /lib64 ] || ln -s usr/lib64 /lib64
test -e /lib64/ld-linux-x86-64.so.2
install -m 0755 /opt/lab-shim/iptables-wrapper /usr/local/sbin/lab-iptables-wrapper
for name in iptables ip6tables iptables-save iptables-restore ip6tables-save ip6tables-restore; do
    ln -sf lab-iptables-wrapper "/usr/local/sbin/$name"
done
install -m 0755 /opt/lab-shim/lab-runc /usr/local/bin/lab-runc
# Smoke test at build time: both run here (natively, x86-64) or the build fails.
/usr/local/sbin/iptables --version
/opt/x86/usr/sbin/runc --version
