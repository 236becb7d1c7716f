#!/usr/bin/env bash
# Installs and starts what the compose check needs on a Debian/Ubuntu machine: a Docker engine
# (Debian's docker.io), docker-compose (v1, which honours depends_on conditions), and debootstrap
# (for ../shared/compose/standins.sh, which builds local stand-ins of the base images where no
# image registry is reachable). Safe to run again: installs only what is missing, and starts
# dockerd only when no engine answers.
set -euo pipefail

need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "install-docker: need root or sudo" >&2; exit 1; }
  sudo="sudo"
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "install-docker: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  if command -v systemctl >/dev/null 2>&1 && systemctl is-system-running >/dev/null 2>&1; then
    $sudo systemctl start docker
  else
    # No service manager (a container or a bare VM): run the engine in the background.
    log=${TMPDIR:-/tmp}/sluice-dockerd.log
    $sudo sh -c "nohup dockerd >'$log' 2>&1 &"
  fi
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { echo "install-docker: dockerd did not start (see ${log:-journalctl -u docker})" >&2; exit 1; }
fi
echo "install-docker: engine $(docker version --format '{{.Server.Version}}') ready" >&2
