# raftset container image: one `raftset serve` node per container.
#
# Two ways to put the binary in the image; the runtime stage is the same:
#   docker build -t raftset:0.1.0 .
#       compiles raftset in ${RUST_IMAGE} (needs that image and crates.io);
#   DOCKER_BUILDKIT=1 docker build --build-arg BINARY_STAGE=prebuilt -t raftset:0.1.0 .
#       copies a host-built target/release/raftset from the build context
#       (`cargo build --release --locked` first). The host must have a glibc no
#       newer than the runtime base's (Debian 12: 2.36).
# BuildKit builds only the stages the runtime stage needs, so with
# BINARY_STAGE=prebuilt the Rust image is never pulled. The legacy builder
# builds every stage, so it needs ${RUST_IMAGE} in both cases.
# scripts/build-image does the prebuilt build on a machine that cannot pull.
#
# No `# syntax=` line on purpose: it makes BuildKit pull a frontend image.

ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot
ARG BINARY_STAGE=build

# --- build: compile in the image -------------------------------------------
FROM ${RUST_IMAGE} AS build
WORKDIR /src
# Only what `cargo build --release` reads: build.rs compiles proto/ with protox
# (pure Rust), so the slim image needs no protoc.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto/ proto/
COPY src/ src/
COPY examples/ examples/
RUN cargo build --release --locked \
 && install -D -m 0755 target/release/raftset /usr/local/bin/raftset \
 && mkdir -p /var/lib/raftset

# --- prebuilt: take the host's release binary ------------------------------
FROM scratch AS prebuilt
COPY target/release/raftset /usr/local/bin/raftset
# An empty directory for the runtime stage to copy (and chown) as the data dir:
# the distroless runtime has no shell to `mkdir` with.
WORKDIR /var/lib/raftset

# --- binary: whichever of the two BINARY_STAGE names -----------------------
FROM ${BINARY_STAGE} AS binary

# --- runtime ---------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS runtime
COPY --from=binary /usr/local/bin/raftset /usr/local/bin/raftset
# The data dir belongs to the non-root user, so a fresh volume (Docker copies
# the image's ownership into it) is writable; Kubernetes uses fsGroup instead.
COPY --from=binary --chown=10001:10001 /var/lib/raftset /var/lib/raftset
# Numeric, so no /etc/passwd entry is needed and Kubernetes' runAsNonRoot can
# check it. UID >= 10000 keeps clear of host users.
USER 10001:10001
# 7000 client gRPC, 7001 Raft peers, 8080 HTTP (visits, probes, metrics),
# 8081 the probes alone.
EXPOSE 7000 7001 8080 8081
# Declared after the chown above: later changes to a VOLUME path are dropped.
VOLUME ["/var/lib/raftset"]
# Exec form: the distroless runtime has no shell. `healthcheck` asks
# /readyz?noleader on the node's probe port (RAFTSET_LISTEN_PROBES):
# healthy once the node is a member, leader or not, so a cluster that lost
# its quorum is not restarted by tools that act on health. The start period
# covers founding, joining and catching up. Kubernetes ignores HEALTHCHECK
# and uses the StatefulSet's probes.
HEALTHCHECK --interval=5s --timeout=3s --start-period=60s --retries=3 \
    CMD ["/usr/local/bin/raftset", "healthcheck"]
# raftset is PID 1 and handles SIGTERM itself (a leader hands over leadership).
ENTRYPOINT ["/usr/local/bin/raftset"]
CMD ["serve"]
