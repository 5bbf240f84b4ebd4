# Podman set-up shared by scripts that build or run the Waypost image on this
# kind of machine (no Docker engine, no registry). Source after lib.sh.
#
#   container_env     installs podman/buildah/runc, writes a containers.conf
#                     (runc, cgroupfs, explicit ulimits) and a storage.conf
#                     under .work/container, exports CONTAINERS_CONF and
#                     CONTAINERS_STORAGE_CONF
#   container_base    makes localhost/debian:bookworm-minbase with debootstrap
#                     (tarball cached in .work/container) and tags it as
#                     docker.io/library/debian:bookworm-slim so the
#                     Dockerfile's FROM resolves without a pull
#   container_build_image TAG BINARY
#                     builds server/Dockerfile with a prebuilt binary

CONTAINER_WORK="$WAYPOST_WORK/container"

container_env() {
  apt_install podman buildah runc catatonit containernetworking-plugins iptables debootstrap
  mkdir -p "$CONTAINER_WORK/storage" "$CONTAINER_WORK/run"
  cat >"$CONTAINER_WORK/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
init_path = "/usr/bin/catatonit"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
  cat >"$CONTAINER_WORK/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$CONTAINER_WORK/storage"
runroot = "$CONTAINER_WORK/run"
EOF
  export CONTAINERS_CONF="$CONTAINER_WORK/containers.conf"
  export CONTAINERS_STORAGE_CONF="$CONTAINER_WORK/storage.conf"
}

container_base() {
  local tag=localhost/debian:bookworm-minbase
  if podman image exists "$tag"; then
    podman tag "$tag" docker.io/library/debian:bookworm-slim
    return 0
  fi
  local tarball="$CONTAINER_WORK/debian-bookworm-minbase.tar"
  if [ ! -s "$tarball" ]; then
    log "debootstrap a Debian bookworm minbase (cached in $tarball)"
    local mirror
    mirror="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
    mirror="${mirror:-http://deb.debian.org/debian}"
    local rootfs="$CONTAINER_WORK/rootfs"
    rm -rf "$rootfs"
    debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$CONTAINER_WORK/debootstrap.log" 2>&1 || {
      tail -20 "$CONTAINER_WORK/debootstrap.log" >&2; return 1; }
    # What a slim image leaves out: apt caches and lists.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$rootfs"
  fi
  podman import "$tarball" "$tag" >/dev/null
  podman tag "$tag" docker.io/library/debian:bookworm-slim
}

container_build_image() {
  local tag="$1" binary="$2"
  local ctx="$CONTAINER_WORK/context"
  rm -rf "$ctx" && mkdir -p "$ctx"
  cp "$binary" "$ctx/waypost"
  # --format docker keeps HEALTHCHECK (the OCI format has no such field).
  podman build --pull=never --format docker -q \
    -f "$WAYPOST_ROOT/server/Dockerfile" \
    --target prebuilt --build-arg PREBUILT=waypost \
    -t "$tag" "$ctx"
}

# deploy_venv : a Python venv (.work/venv-deploy) with tests/deploy/requirements.txt
# (websockets, kubernetes-validate). Prints its python.
deploy_venv() {
  local venv="$WAYPOST_WORK/venv-deploy" req="$WAYPOST_ROOT/tests/deploy/requirements.txt"
  if [ ! -x "$venv/bin/python" ] || ! cmp -s "$req" "$venv/requirements.stamp"; then
    log "python venv for deployment tests ($venv)" >&2
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$req" >&2
    cp "$req" "$venv/requirements.stamp"
  fi
  echo "$venv/bin/python"
}

# free_port : an unused TCP port on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# container_build_from_source TAG : builds the Dockerfile's default target
# (compiling in the builder stage). No rust image can be pulled here, so the
# builder is the local Debian base plus gcc, with the host's Rust toolchain
# and CA bundle mounted read-only; crates come from crates.io. Slow (a full
# release compile): opt-in via WAYPOST_CONTAINER_BUILD=source in 60-container.sh.
container_build_from_source() {
  local tag="$1" ctx="$CONTAINER_WORK/rust-local"
  mkdir -p "$ctx"
  cat >"$ctx/Containerfile" <<'EOC'
FROM docker.io/library/debian:bookworm-slim
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc libc6-dev ca-certificates >/dev/null && rm -rf /var/lib/apt/lists/*
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
EOC
  podman build --pull=never -q -t localhost/rust-local:bookworm "$ctx" >/dev/null
  local rustup_home="${RUSTUP_HOME:-$HOME/.rustup}" cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
  podman build --pull=never --format docker -f "$WAYPOST_ROOT/server/Dockerfile" \
    --build-arg RUST_IMAGE=localhost/rust-local:bookworm \
    -v "$rustup_home:/usr/local/rustup:ro" -v "$cargo_bin:/usr/local/cargo/bin:ro" \
    -v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro \
    -t "$tag" "$WAYPOST_ROOT"
}
