#!/bin/sh
# The entry point of Docker Hub's registry:2.8 image, rewritten for the lab's stand-in
# with the same behaviour (distribution/distribution-library-image): a configuration
# file as first argument means `registry serve <file>`; registry subcommands and options
# go to the registry; anything else (sh, a shell command) runs as given.
set -e
case "$1" in
  *.yml | *.yaml) set -- registry serve "$@" ;;
  serve | garbage-collect | help | -*) set -- registry "$@" ;;
esac
exec "$@"
