#!/bin/sh
# `docker run IMAGE <verb> [options]` runs `python -m musiclit <verb> [options]`; `docker run IMAGE bash`
# (or any other program on PATH that is not a musiclit verb) runs that program instead.
set -e
case "$1" in
  ""|-*|help|prepare|cache|fit|validate|generate|export|import|estimate|evaluate|check-copying|report|demo)
    exec python -m musiclit "$@" ;;
  *)
    exec "$@" ;;
esac
