#!/bin/sh
# Install the x86-64 iptables and runc under /opt/x86 (see README.md). Runs at image
# build time inside the arm64 image.
set -eux
dpkg --add-architecture amd64
apt-get update -q
apt-get install -y -q --no-install-recommends \
    libc6:amd64 libxtables12:amd64 libip4tc2:amd64 libip6tc2:amd64 libnftnl11:amd64 \
    libmnl0:amd64 libnetfilter-conntrack3:amd64 libnfnetlink0:amd64 libseccomp2:amd64
work=$(mktemp -d)
cd "$work"
apt-get download iptables:amd64 runc:amd64
mkdir -p /opt/x86
for deb in ./*.deb; do dpkg -x "$deb" /opt/x86; done
cd /
rm -rf "$work"
install -m 0755 /opt/lab-shim/iptables-wrapper /usr/local/sbin/lab-iptables-wrapper
for name in iptables ip6tables iptables-save iptables-restore ip6tables-save ip6tables-restore; do
    ln -sf lab-iptables-wrapper "/usr/local/sbin/$name"
done
install -m 0755 /opt/lab-shim/lab-runc /usr/local/bin/lab-runc
# Smoke test at build time: both run here (natively, x86-64) or the build fails.
/usr/local/sbin/iptables --version
/opt/x86/usr/sbin/runc --version
