#!/usr/bin/env bash
# Release artifacts into target/dist/ (the version from Cargo.toml):
#   xoauth2-proxy-<v>-x86_64-unknown-linux-musl.tar.gz  static Linux binary
#   xoauth2-proxy_<v>_amd64.deb                         the binary, the system unit, /etc conffile
#   xoauth2-proxy-<v>-x86_64-pc-windows-gnu.zip         the exe, README, example config
#   xoauth2-proxy-<v>.msi                               Windows installer: the exe, the service,
#                                                       %ProgramData% config, a Start-menu link
#   xoauth2-proxy-<v>.tar.gz                            the source (git archive), for Homebrew
#   xoauth2-proxy.rb                                    the Homebrew formula, url/sha256 filled in
#   Dockerfile + the binary it copies                   `docker build target/dist/container`
#   xoauth2-proxy-<v>-container.tar                     that image, built by buildah (when
#                                                       installed): `docker load -i`
#   SHA256SUMS                                          over all of the above
# Cargo builds are incremental: a target already built (the release build and
# the Windows exe of .ci/run) is reused, not rebuilt. Needs: cargo with the
# x86_64-unknown-linux-musl and x86_64-pc-windows-gnu targets, musl-gcc
# (Debian: musl-tools), gcc-mingw-w64-x86-64, dpkg-deb, zip, git, wixl and
# msibuild/msiinfo (Debian: wixl, msitools).
# DIST_BASE_URL: where the source tarball is published (the formula's url).
set -euo pipefail
cd "$(dirname "$0")/.."

# A release build of the whole tree from scratch takes ~10 min on 2 cores;
# a fresh one is seconds.
readonly CARGO_TIMEOUT=1800
# Packing, archiving, checksums: seconds each.
readonly TOOL_TIMEOUT=120

log() { printf '[dist] %s\n' "$*"; }
run() {
    local limit="$1"
    shift
    log "\$ $*"
    timeout --kill-after=10 "$limit" "$@"
}

name=xoauth2-proxy
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)"
[ -n "$version" ] || { echo "no version in Cargo.toml" >&2; exit 1; }
out=target/dist
base_url="${DIST_BASE_URL:-https://github.com/xoauth2-proxy/xoauth2-proxy/releases/download/v$version}"
musl=x86_64-unknown-linux-musl
win=x86_64-pc-windows-gnu
log "version $version -> $out/"
rm -rf "$out"
mkdir -p "$out"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT

# --- builds -----------------------------------------------------------------
# ring compiles C: musl-gcc for the static build, MinGW for Windows.
run "$CARGO_TIMEOUT" env CC_x86_64_unknown_linux_musl=musl-gcc \
    cargo build --release --locked --bin "$name" --target "$musl"
run "$CARGO_TIMEOUT" cargo build --release --locked --bin "$name" --target "$win"
bin="target/$musl/release/$name"
exe="target/$win/release/$name.exe"
# Rust's musl target links static-pie ("static-pie linked" to file(1)):
# static like "statically linked", and still placed at a random address.
# No interpreter, no shared library.
if ! file "$bin" | grep -Eq 'static-pie linked|statically linked' ||
    readelf -l "$bin" | grep -q INTERP || readelf -d "$bin" | grep -q NEEDED; then
    echo "$bin is not statically linked: $(file "$bin")" >&2
    exit 1
fi
"$bin" --version

# --- Linux tarball ------------------------------------------------------------
tarname="$name-$version-$musl"
mkdir "$stage/$tarname"
install -m 0755 "$bin" "$stage/$tarname/$name"
install -m 0644 README.md proxy.toml.example "$stage/$tarname/"
for f in LICENSE LICENSE-MIT LICENSE-APACHE; do
    if [ -f "$f" ]; then install -m 0644 "$f" "$stage/$tarname/"; fi
done
# Reproducible: owner, order and times do not depend on this machine.
mtime="$(git log -1 --format=%cI 2>/dev/null || echo '2000-01-01T00:00:00Z')"
run "$TOOL_TIMEOUT" tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="$mtime" \
    -C "$stage" -czf "$out/$tarname.tar.gz" "$tarname"

# --- Debian package -----------------------------------------------------------
deb="$stage/deb"
install -d -m 0755 "$deb/DEBIAN" "$deb/usr/bin" "$deb/lib/systemd/system" \
    "$deb/etc/$name" "$deb/usr/share/doc/$name"
install -m 0755 "$bin" "$deb/usr/bin/$name"
# The unit `service install --system` would write, from the program itself.
"$bin" --config "/etc/$name/proxy.toml" service unit --exe "/usr/bin/$name" \
    --timeout-from proxy.toml.example >"$deb/lib/systemd/system/$name.service"
chmod 0644 "$deb/lib/systemd/system/$name.service"
# The conffile: the example, readable by the service's dynamic user (it holds
# no secret: client ids are public, local passwords are hashes).
install -m 0644 proxy.toml.example "$deb/etc/$name/proxy.toml"
install -m 0644 README.md "$deb/usr/share/doc/$name/README.md"
install -m 0644 dist/debian/copyright "$deb/usr/share/doc/$name/copyright"
for script in postinst prerm postrm; do
    install -m 0755 "dist/debian/$script" "$deb/DEBIAN/$script"
done
echo "/etc/$name/proxy.toml" >"$deb/DEBIAN/conffiles"
installed_kib="$(du -sk --exclude=DEBIAN "$deb" | cut -f1)"
sed -e "s/@VERSION@/$version/" -e "s/@INSTALLED_SIZE@/$installed_kib/" \
    dist/debian/control >"$deb/DEBIAN/control"
run "$TOOL_TIMEOUT" dpkg-deb --build --root-owner-group "$deb" "$out/${name}_${version}_amd64.deb"

# --- Windows zip --------------------------------------------------------------
zipname="$name-$version-$win"
mkdir "$stage/$zipname"
install -m 0644 "$exe" "$stage/$zipname/$name.exe"
install -m 0644 README.md proxy.toml.example "$stage/$zipname/"
(cd "$stage" && run "$TOOL_TIMEOUT" zip -q -r -X "$OLDPWD/$out/$zipname.zip" "$zipname")

# --- Windows installer (MSI) ---------------------------------------------------
run "$TOOL_TIMEOUT" bash dist/msi.sh "$exe" "$out/$name-$version.msi"

# --- source tarball and the Homebrew formula -----------------------------------
src="$name-$version.tar.gz"
run "$TOOL_TIMEOUT" git archive --format=tar.gz --prefix="$name-$version/" -o "$out/$src" HEAD
src_sha="$(sha256sum "$out/$src" | cut -d' ' -f1)"
sed -e "s|@URL@|$base_url/$src|" -e "s|@SHA256@|$src_sha|" -e "s|@VERSION@|$version|" \
    dist/homebrew/$name.rb >"$out/$name.rb"
if grep -n '@[A-Z0-9]*@' "$out/$name.rb"; then
    echo "placeholders left in $out/$name.rb" >&2
    exit 1
fi

# --- container context ----------------------------------------------------------
mkdir -p "$out/container"
install -d -m 0700 "$out/container/state"
install -m 0644 dist/Dockerfile "$out/container/Dockerfile"
install -m 0755 "$bin" "$out/container/$name"
install -m 0644 proxy.toml.example "$out/container/proxy.toml.example"
# The image itself, where buildah is installed: no daemon, no registry (FROM
# scratch), its store a temporary folder. A docker-archive loads with
# `docker load -i` and `podman load -i`.
if command -v buildah >/dev/null; then
    store="$(mktemp -d)"
    bh() { run "$TOOL_TIMEOUT" buildah --root "$store/root" --runroot "$store/run" --storage-driver vfs "$@"; }
    bh bud --quiet --isolation chroot -t "$name:$version" "$out/container" >/dev/null
    bh push --quiet "$name:$version" "docker-archive:$out/$name-$version-container.tar:$name:$version"
    bh rmi --all >/dev/null
    rm -rf "$store"
else
    log "buildah not installed: the container context only, no image archive"
fi

# --- checksums --------------------------------------------------------------------
sums="$stage/SHA256SUMS"
(cd "$out" && find . -type f | sed 's|^\./||' | LC_ALL=C sort | xargs sha256sum >"$sums")
install -m 0644 "$sums" "$out/SHA256SUMS"
log "artifacts:"
(cd "$out" && ls -l -- *.* container)
