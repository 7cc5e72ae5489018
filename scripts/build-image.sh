#!/usr/bin/env bash
# Builds the container image chaosnet-agent:<version> without any registry (`make image`).
#
#   scripts/build-image.sh [--bin PATH] [--controller PATH] [--tag TAG]
#
# One image serves both containers of a pod: the agent (the entrypoint) and, on Kubernetes,
# the NAT router next to it (`chaosnet pod-router`, with nft, ip and conntrack from this
# machine). The image is FROM scratch: a minimal rootfs assembled here from the agent and
# controller binaries (stripped), the three network tools, every shared library `ldd` lists
# for them (librocksdb, libnftables and their dependencies, libc, the dynamic loader) at the
# same paths, /etc/passwd and /etc/group with the user chaosnet (uid 10001), an empty /tmp
# (1777) and /data (owned by 10001, a volume). No shell, no package manager.
#
# Defaults: --bin ${CARGO_TARGET_DIR:-target}/release/chaosnet-agent,
#           --controller ${CARGO_TARGET_DIR:-target}/release/chaosnet,
#           --tag chaosnet-agent:<workspace version from Cargo.toml>.
# For machines that reach a registry there is also docker/agent/Dockerfile.multistage.
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
    echo "build-image: error: $*" >&2
    exit 1
}

version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\([^"]*\)".*/\1/p' Cargo.toml | head -n1)
[ -n "$version" ] || die "cannot read the workspace version from Cargo.toml"

bin=${CARGO_TARGET_DIR:-target}/release/chaosnet-agent
controller=${CARGO_TARGET_DIR:-target}/release/chaosnet
tag=chaosnet-agent:$version
while [ $# -gt 0 ]; do
    case $1 in
    --bin) [ $# -ge 2 ] || die "--bin needs a path"; bin=$2; shift 2 ;;
    --bin=*) bin=${1#--bin=}; shift ;;
    --controller) [ $# -ge 2 ] || die "--controller needs a path"; controller=$2; shift 2 ;;
    --controller=*) controller=${1#--controller=}; shift ;;
    --tag) [ $# -ge 2 ] || die "--tag needs a value"; tag=$2; shift 2 ;;
    --tag=*) tag=${1#--tag=}; shift ;;
    -h | --help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (usage: $0 [--bin PATH] [--controller PATH] [--tag TAG])" ;;
    esac
done

# Preconditions, each with what to do about it.
command -v docker >/dev/null 2>&1 ||
    die "docker not found: install the Docker engine (Debian: apt-get install docker.io)"
if ! info_err=$(docker info 2>&1 >/dev/null); then
    echo "$info_err" | tail -n 3 >&2
    die "the Docker daemon is not reachable (\`docker info\` fails): start it with
  systemctl start docker        (systemd)
  service docker start          (sysvinit)
  dockerd >/var/log/dockerd.log 2>&1 &   (containers without an init)
and check that you may use /var/run/docker.sock (root or the docker group)"
fi
for b in "$bin" "$controller"; do
    if [ ! -f "$b" ]; then
        die "$b missing: build it first with \`make release\` (or run \`make image\`)"
    fi
    [ -x "$b" ] || die "$b is not executable"
done
# The pod router's tools, from this machine (Debian packages nftables, iproute2, conntrack).
tools=
for t in nft ip conntrack; do
    p=$(command -v "$t" 2>/dev/null || true)
    [ -n "$p" ] || for d in /usr/sbin /sbin; do [ -x "$d/$t" ] && p=$d/$t && break; done
    [ -n "$p" ] || die "$t not found: the image carries it for the pod router (Debian: apt-get install $(case $t in nft) echo nftables ;; ip) echo iproute2 ;; *) echo conntrack ;; esac))"
    tools="$tools $p"
done
command -v ldd >/dev/null 2>&1 || die "ldd not found (Debian: apt-get install libc-bin)"

start=$(date +%s.%N)
work=$(mktemp -d "${TMPDIR:-/tmp}/chaosnet-image.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/rootfs

# A binary, stripped when a stripping tool is there (the image does not need debug info).
copy_stripped() { # src dest
    install -d -m 0755 "$(dirname "$2")"
    if command -v strip >/dev/null 2>&1; then
        strip -o "$2" "$1"
    elif command -v objcopy >/dev/null 2>&1; then
        objcopy --strip-debug "$1" "$2"
    else
        cp "$1" "$2"
    fi
    chmod 0755 "$2"
}
command -v strip >/dev/null 2>&1 || command -v objcopy >/dev/null 2>&1 ||
    echo "build-image: note: neither strip nor objcopy found, copying the binaries unstripped" >&2
copy_stripped "$bin" "$root/usr/local/bin/chaosnet-agent"
copy_stripped "$controller" "$root/usr/local/bin/chaosnet"
for t in $tools; do
    copy_stripped "$t" "$root/usr/sbin/$(basename "$t")"
done
# ip reads its tables (rt_tables, protocols) from /etc/iproute2 when present.
[ -d /etc/iproute2 ] && cp -rL /etc/iproute2 "$root/etc/iproute2" 2>/dev/null || true

# Every shared library ldd resolves, plus the dynamic loader, at the paths the binaries expect.
libs=
for b in "$bin" "$controller" $tools; do
    ldd_out=$(ldd "$b" 2>&1) || die "ldd $b failed: $ldd_out"
    if echo "$ldd_out" | grep -q 'not found'; then
        die "$b has unresolved libraries:
$(echo "$ldd_out" | grep 'not found')"
    fi
    libs="$libs $(echo "$ldd_out" | awk '
        $2 == "=>" && $3 ~ /^\// { print $3; next }   # libfoo.so => /lib/.../libfoo.so (0x...)
        $1 ~ /^\//                { print $1 }          # /lib64/ld-linux-x86-64.so.2 (0x...)
    ')"
done
libs=$(echo $libs | tr ' ' '\n' | sort -u)
[ -n "$libs" ] || die "ldd listed no libraries (static binaries need no rootfs libs; not supported here)"
nlibs=0
for lib in $libs; do
    install -d -m 0755 "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib" # -L: the file itself, not a dangling symlink
    nlibs=$((nlibs + 1))
done
ldd_out=$(ldd "$bin" 2>&1)
# The loader path in the binary's PT_INTERP must exist (it is in the ldd list; check anyway).
interp=$(echo "$ldd_out" | awk '$1 ~ /^\/.*ld-linux/ { print $1 }' | head -n1)
[ -n "$interp" ] && [ -f "$root$interp" ] || die "dynamic loader not found in ldd output"

# Users, and the writable directories.
install -d -m 0755 "$root/etc"
cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
chaosnet:x:10001:10001:chaosnet agent:/data:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
EOF
cat >"$root/etc/group" <<'EOF'
root:x:0:
chaosnet:x:10001:
nogroup:x:65534:
EOF
chmod 0644 "$root/etc/passwd" "$root/etc/group"
install -d -m 1777 "$root/tmp"
# /data goes in with its own COPY --chown (COPY makes everything else root-owned).
install -d -m 0755 "$work/data"

revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
# The source label: $CHAOSNET_IMAGE_SOURCE, else the workspace `repository`, else the git remote
# origin; with none of them the label is left out rather than invented.
source_url=${CHAOSNET_IMAGE_SOURCE:-$(sed -n '/^\[workspace.package\]/,/^\[/s/^repository *= *"\([^"]*\)".*/\1/p' Cargo.toml | head -n1)}
[ -n "$source_url" ] || source_url=$(git remote get-url origin 2>/dev/null || true)
source_label=
if [ -n "$source_url" ]; then
    source_label="org.opencontainers.image.source=\"$source_url\" \\
      "
else
    echo "build-image: note: no source URL (set CHAOSNET_IMAGE_SOURCE, or repository in Cargo.toml), label org.opencontainers.image.source left out" >&2
fi
licenses=$(sed -n '/^\[workspace.package\]/,/^\[/s/^license *= *"\([^"]*\)".*/\1/p' Cargo.toml | head -n1)
created=$(date -u +%Y-%m-%dT%H:%M:%SZ)

cat >"$work/Dockerfile" <<EOF
# Generated by scripts/build-image.sh: FROM scratch, no registry needed.
FROM scratch
COPY rootfs/ /
COPY --chown=10001:10001 data/ /data/
LABEL org.opencontainers.image.title="chaosnet-agent" \\
      org.opencontainers.image.description="chaosnet agent: a P2P node over QUIC with a Kademlia node graph in RocksDB; chaosnet pod-router for NAT in a pod" \\
      org.opencontainers.image.version="$version" \\
      ${source_label}org.opencontainers.image.licenses="$licenses" \\
      org.opencontainers.image.revision="$revision" \\
      org.opencontainers.image.created="$created"
ENV PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
USER 10001:10001
WORKDIR /data
VOLUME /data
ENTRYPOINT ["/usr/local/bin/chaosnet-agent"]
CMD ["--help"]
EOF

# Docker CLIs >= 23 want buildx for BuildKit; without it, use the classic builder explicitly
# (it builds FROM scratch images fine and needs no registry either).
if [ -z "${DOCKER_BUILDKIT:-}" ] && ! docker buildx version >/dev/null 2>&1; then
    export DOCKER_BUILDKIT=0
fi

echo "build-image: $bin, $controller,$tools -> $tag ($nlibs shared libraries)"
old_id=$(docker image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)
if ! build_out=$(docker build --pull=false -t "$tag" "$work" 2>&1); then
    echo "$build_out" >&2
    die "docker build failed"
fi
echo "$build_out" | grep -E '^(Successfully|writing image|naming to)' || true

# A rebuild leaves the previous image under this tag dangling: remove it (not if still in use).
new_id=$(docker image inspect --format '{{.Id}}' "$tag")
if [ -n "$old_id" ] && [ "$old_id" != "$new_id" ]; then
    docker image rm "$old_id" >/dev/null 2>&1 || true
fi

end=$(date +%s.%N)
size=$(docker image inspect --format '{{.Size}}' "$tag")
printf 'build-image: built %s in %.1f s, image size %s bytes (%.1f MiB)\n' \
    "$tag" "$(awk "BEGIN{print $end - $start}")" \
    "$size" "$(awk "BEGIN{print $size / 1048576}")"
