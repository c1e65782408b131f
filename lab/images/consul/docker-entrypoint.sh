#!/usr/bin/dumb-init /bin/sh
# The entry point of Docker Hub's hashicorp/consul 1.8.x images, rewritten for the lab's
# stand-in with the same behaviour (hashicorp/docker-consul, 0.X/docker-entrypoint.sh):
# dumb-init is PID 1; `agent` gets -data-dir and -config-dir; any consul command runs as
# consul:consul through su-exec, after /consul/data and /consul/config are chowned to
# that user when they belong to someone else. Under `set -e` a failed chown (a read-only
# mount, or a container started as a non-root user) stops the container, as upstream.
set -e

# CONSUL_BIND_INTERFACE / CONSUL_CLIENT_INTERFACE: the interface whose first IPv4
# address becomes -bind= / -client=.
address_of() {
  ip -o -4 addr list "$1" | head -n1 | awk '{print $4}' | cut -d/ -f1
}
CONSUL_BIND=
if [ -n "$CONSUL_BIND_INTERFACE" ]; then
  addr=$(address_of "$CONSUL_BIND_INTERFACE")
  if [ -z "$addr" ]; then
    echo "Could not find IP for interface '$CONSUL_BIND_INTERFACE', exiting"
    exit 1
  fi
  CONSUL_BIND="-bind=$addr"
  echo "==> Found address '$addr' for interface '$CONSUL_BIND_INTERFACE', setting bind option..."
fi
CONSUL_CLIENT=
if [ -n "$CONSUL_CLIENT_INTERFACE" ]; then
  addr=$(address_of "$CONSUL_CLIENT_INTERFACE")
  if [ -z "$addr" ]; then
    echo "Could not find IP for interface '$CONSUL_CLIENT_INTERFACE', exiting"
    exit 1
  fi
  CONSUL_CLIENT="-client=$addr"
  echo "==> Found address '$addr' for interface '$CONSUL_CLIENT_INTERFACE', setting client option..."
fi

CONSUL_DATA_DIR=/consul/data
CONSUL_CONFIG_DIR=/consul/config

# Configuration as JSON in the environment, without a mount.
if [ -n "$CONSUL_LOCAL_CONFIG" ]; then
  echo "$CONSUL_LOCAL_CONFIG" > "$CONSUL_CONFIG_DIR/local.json"
fi

# Options only: they are consul's.
case "$1" in
  -*) set -- consul "$@" ;;
esac

if [ "$1" = agent ]; then
  shift
  # shellcheck disable=SC2086  # empty options vanish, as upstream
  set -- consul agent -data-dir="$CONSUL_DATA_DIR" -config-dir="$CONSUL_CONFIG_DIR" \
    $CONSUL_BIND $CONSUL_CLIENT "$@"
elif [ "$1" = version ]; then
  set -- consul "$@"
elif consul --help "$1" 2>&1 | grep -q "consul $1"; then
  # A consul subcommand (the exit status does not tell; the help text does).
  set -- consul "$@"
fi

if [ "$1" = consul ]; then
  consul_uid=$(id -u consul)
  for dir in "$CONSUL_DATA_DIR" "$CONSUL_CONFIG_DIR"; do
    if [ "$(stat -c %u "$dir")" != "$consul_uid" ]; then
      chown -R consul:consul "$dir"
    fi
  done
  if [ -n "${CONSUL_ALLOW_PRIVILEGED_PORTS+set}" ]; then
    setcap cap_net_bind_service=+ep /bin/consul
  fi
  set -- su-exec consul:consul "$@"
fi

exec "$@"
