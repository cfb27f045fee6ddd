#!/usr/bin/env bash
# The release artifacts of dist/build.sh, built and then proven: the .deb
# installed on this machine (nothing started) and purged again, the static
# tarball binary, the Windows zip's content, the Homebrew formula's syntax,
# the container image loaded and run (buildah, chroot isolation) as its
# non-root user against the fakes (.ci/container.sh),
# and the checksums. Runs as root on a fresh Debian 12; installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."

# apt on a fresh machine: an update and a few small packages.
readonly APT_TIMEOUT=600
# Every packaged binary call and dpkg operation: seconds when healthy.
readonly CMD_TIMEOUT=60
# dist/build.sh: the musl build from scratch (~10 min on 2 cores) plus packing.
readonly BUILD_TIMEOUT=1800

pkg_start=$SECONDS
part_start=$SECONDS
part() {
    printf -- '--- %s (previous part %ds, package step %ds so far)\n' \
        "$*" "$((SECONDS - part_start))" "$((SECONDS - pkg_start))"
    part_start=$SECONDS
}
t() {
    printf '$ %s\n' "$*" >&2
    timeout --kill-after=10 "$CMD_TIMEOUT" "$@"
}

part "tools (apt)"
rustup target add x86_64-unknown-linux-musl x86_64-pc-windows-gnu
need=()
command -v musl-gcc >/dev/null || need+=(musl-tools)
command -v x86_64-w64-mingw32-gcc >/dev/null || need+=(gcc-mingw-w64-x86-64)
command -v zip >/dev/null || need+=(zip)
command -v unzip >/dev/null || need+=(unzip)
command -v file >/dev/null || need+=(file)
command -v readelf >/dev/null || need+=(binutils)
command -v ruby >/dev/null || need+=(ruby)
command -v shellcheck >/dev/null || need+=(shellcheck)
# The container image: built and run without a daemon (chroot isolation).
command -v buildah >/dev/null || need+=(buildah)
command -v wixl >/dev/null || need+=(wixl)
command -v msibuild >/dev/null || need+=(msitools)
if [ "${#need[@]}" -gt 0 ]; then
    timeout "$APT_TIMEOUT" apt-get update
    DEBIAN_FRONTEND=noninteractive timeout "$APT_TIMEOUT" apt-get install -y --no-install-recommends "${need[@]}"
fi

part "shell scripts: bash -n, shellcheck"
for s in dist/build.sh dist/msi.sh .ci/package.sh .ci/container.sh .ci/wine.sh .ci/msi.sh \
    .ci/wine/lib.sh dist/debian/postinst dist/debian/prerm dist/debian/postrm; do
    bash -n "$s"
done
t shellcheck -x dist/build.sh dist/msi.sh .ci/package.sh .ci/container.sh .ci/wine.sh .ci/msi.sh .ci/wine/lib.sh
t shellcheck -s sh dist/debian/postinst dist/debian/prerm dist/debian/postrm

part "dist/build.sh (reuses the targets already built)"
timeout --kill-after=30 "$BUILD_TIMEOUT" bash dist/build.sh

out=target/dist
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)"
commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
expect_version="xoauth2-proxy $version (commit $commit)"

part "checksums"
(cd "$out" && t sha256sum -c --strict SHA256SUMS)

part "Linux tarball: static, runs"
work="$(mktemp -d)"
deb="$out/xoauth2-proxy_${version}_amd64.deb"
purge() {
    if dpkg -s xoauth2-proxy >/dev/null 2>&1; then
        echo "purging xoauth2-proxy (cleanup)"
        timeout "$CMD_TIMEOUT" dpkg --purge xoauth2-proxy || true
    fi
    rm -rf "$work"
}
trap purge EXIT
if dpkg -s xoauth2-proxy >/dev/null 2>&1; then
    echo "xoauth2-proxy is already installed on this machine; refusing to touch it" >&2
    exit 1
fi
t tar -C "$work" -xzf "$out/xoauth2-proxy-$version-x86_64-unknown-linux-musl.tar.gz"
tb="$work/xoauth2-proxy-$version-x86_64-unknown-linux-musl"
ls -l "$tb"
# static-pie: static, and still at a random address (see dist/build.sh).
file "$tb/xoauth2-proxy"
file "$tb/xoauth2-proxy" | grep -Eq 'static-pie linked|statically linked'
if readelf -l "$tb/xoauth2-proxy" | grep -q INTERP || readelf -d "$tb/xoauth2-proxy" | grep -q NEEDED; then
    echo "the tarball's binary needs a dynamic loader or libraries" >&2
    exit 1
fi
got="$(t "$tb/xoauth2-proxy" --version)"
echo "$got"
[ "$got" = "$expect_version" ] || { echo "expected: $expect_version" >&2; exit 1; }
t "$tb/xoauth2-proxy" --config "$tb/proxy.toml.example" check-config

part "Windows zip: the exe, README, example"
t unzip -l "$out/xoauth2-proxy-$version-x86_64-pc-windows-gnu.zip" | tee "$work/zip.txt"
for f in xoauth2-proxy.exe README.md proxy.toml.example; do
    grep -q "x86_64-pc-windows-gnu/$f\$" "$work/zip.txt" || { echo "zip lacks $f" >&2; exit 1; }
done

part "Windows MSI: its files, service and version (installed under wine by .ci/msi.sh)"
msi="$out/xoauth2-proxy-$version.msi"
t msiinfo export "$msi" File | tr -d '\r' | tee "$work/msi-files.txt"
for f in xoauth2-proxy.exe README.md proxy.toml.example proxy.toml 'xoauth2-proxy sign-in.url'; do
    grep -q $'\t'"$f"$'\t' "$work/msi-files.txt" || { echo "the MSI lacks $f" >&2; exit 1; }
done
t msiinfo export "$msi" Property | tr -d '\r' | grep -qx $'ProductVersion\t'"${version%%[-+]*}"
t msiinfo export "$msi" ServiceInstall | tr -d '\r' | grep -q $'^Service\txoauth2-proxy\txoauth2-proxy\t16\t2\t1\t'

part "Homebrew formula: ruby -c, consistent with the source tarball"
t ruby -c "$out/xoauth2-proxy.rb"
src_sha="$(sha256sum "$out/xoauth2-proxy-$version.tar.gz" | cut -d' ' -f1)"
grep -q "sha256 \"$src_sha\"" "$out/xoauth2-proxy.rb"
grep -q "url \".*/xoauth2-proxy-$version.tar.gz\"" "$out/xoauth2-proxy.rb"

part "container: the image archive loaded, signed in and serving IMAP as USER 65532 (.ci/container.sh)"
dockerfile="$out/container/Dockerfile"
grep -q '^FROM scratch$' "$dockerfile"
grep -q '^USER 65532:65532$' "$dockerfile"
bash .ci/container.sh

part ".deb: contents, install (nothing started), files, purge"
t dpkg-deb --info "$deb"
t dpkg-deb --contents "$deb"
depends="$(dpkg-deb --field "$deb" Depends)"
[ -z "$depends" ] || { echo ".deb depends on $depends; the binary is static" >&2; exit 1; }
[ "$(dpkg-deb --field "$deb" Installed-Size)" -gt 0 ]
t dpkg -i "$deb"
got="$(t /usr/bin/xoauth2-proxy --version)"
[ "$got" = "$expect_version" ] || { echo "installed: $got" >&2; exit 1; }
for f in /usr/bin/xoauth2-proxy /lib/systemd/system/xoauth2-proxy.service \
    /etc/xoauth2-proxy/proxy.toml /usr/share/doc/xoauth2-proxy/copyright; do
    ls -l "$f"
done
grep -qx /etc/xoauth2-proxy/proxy.toml /var/lib/dpkg/info/xoauth2-proxy.conffiles
# The packaged unit is the one `service install --system` writes.
/usr/bin/xoauth2-proxy --config /etc/xoauth2-proxy/proxy.toml service unit \
    --exe /usr/bin/xoauth2-proxy >"$work/unit"
diff -u "$work/unit" /lib/systemd/system/xoauth2-proxy.service
t /usr/bin/xoauth2-proxy --config /etc/xoauth2-proxy/proxy.toml check-config
if [ -e /etc/systemd/system/multi-user.target.wants/xoauth2-proxy.service ]; then
    echo "the package enabled the service" >&2
    exit 1
fi
if command -v systemd-analyze >/dev/null; then
    # Without systemd as PID 1 verify still parses and checks the unit.
    t systemd-analyze verify /lib/systemd/system/xoauth2-proxy.service
else
    echo "systemd-analyze not available: unit not verified"
fi
t dpkg --purge xoauth2-proxy
left=()
for p in /usr/bin/xoauth2-proxy /lib/systemd/system/xoauth2-proxy.service /etc/xoauth2-proxy \
    /usr/share/doc/xoauth2-proxy /var/lib/xoauth2-proxy /var/lib/private/xoauth2-proxy \
    /var/log/xoauth2-proxy /var/log/private/xoauth2-proxy \
    /etc/systemd/system/multi-user.target.wants/xoauth2-proxy.service; do
    if [ -e "$p" ] || [ -L "$p" ]; then left+=("$p"); fi
done
if [ "${#left[@]}" -gt 0 ]; then
    echo "left after purge: ${left[*]}" >&2
    exit 1
fi
dpkg -s xoauth2-proxy >/dev/null 2>&1 && { echo "still known to dpkg" >&2; exit 1; }
echo "purge left nothing"

part "done"
