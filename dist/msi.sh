#!/usr/bin/env bash
# The Windows installer from a built exe, with wixl (Debian: wixl) and
# msibuild/msiinfo (Debian: msitools):
#
#   bash dist/msi.sh EXE OUT.msi [VERSION]
#
# EXE: target/x86_64-pc-windows-gnu/release/xoauth2-proxy.exe; VERSION: the
# one in Cargo.toml unless given (.ci/msi.sh gives a higher one to prove an
# upgrade). dist/build.sh calls it for the release; .ci/msi.sh for its test.
# What the MSI does: dist/windows/xoauth2-proxy.wxs.
set -euo pipefail
cd "$(dirname "$0")/.."

# wixl and msibuild on a 10 MB exe: a second or two.
readonly TOOL_TIMEOUT=120
name=xoauth2-proxy

[ $# -ge 2 ] || { echo "usage: dist/msi.sh EXE OUT.msi [VERSION]" >&2; exit 2; }
exe="$1"
out="$2"
version="${3:-$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)}"
[ -f "$exe" ] || { echo "no $exe" >&2; exit 1; }
# Windows Installer versions are numeric (major.minor.build, each at most
# 255.255.65535): a pre-release or build suffix is dropped.
msi_version="${version%%[-+]*}"
if ! [[ "$msi_version" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]]; then
    echo "version $version has no numeric x.y.z for the MSI" >&2
    exit 1
fi

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
install -m 0644 "$exe" "$stage/$name.exe"
install -m 0644 README.md proxy.toml.example "$stage/"
# The Start-menu entry: an Internet shortcut to the sign-in page at the
# default admin_listen (127.0.0.1:8089, src/config).
printf '[InternetShortcut]\r\nURL=http://127.0.0.1:8089/\r\n' >"$stage/signin.url"
# wixl takes source paths relative to the working directory.
wxs="$PWD/dist/windows/$name.wxs"
(cd "$stage" && timeout --kill-after=10 "$TOOL_TIMEOUT" wixl -a x64 -D Version="$msi_version" \
    -D Exe="$name.exe" -D Readme=README.md -D Example=proxy.toml.example -D SignInUrl=signin.url \
    -o "$name.msi" "$wxs")
# What wixl's WiX dialect cannot say, set in the tables directly:
# - the configuration's component is Permanent (16: uninstall keeps it) and
#   NeverOverwrite (128: an existing proxy.toml is left as it is), besides
#   64-bit (256);
# - a newer MSI removes the older version right after InstallInitialize
#   (WiX's default for MajorUpgrade; wixl puts it after InstallFinalize);
# - a rebuild of the same version (a new ProductCode) replaces it too
#   (VersionMaxInclusive, 512, with MigrateFeatures, 1: WiX's
#   AllowSameVersionUpgrades), instead of being installed beside it.
# (msiinfo ends its lines with CR LF.)
upgrade_code="$(msiinfo export "$stage/$name.msi" Property | tr -d '\r' | sed -n 's/^UpgradeCode\t//p')"
[ -n "$upgrade_code" ] || { echo "the MSI has no UpgradeCode" >&2; exit 1; }
timeout --kill-after=10 "$TOOL_TIMEOUT" msibuild "$stage/$name.msi" \
    -q "UPDATE \`Component\` SET \`Attributes\` = 400 WHERE \`Component\` = 'Config'" \
    -q "UPDATE \`InstallExecuteSequence\` SET \`Sequence\` = 1501 WHERE \`Action\` = 'RemoveExistingProducts'" \
    -q "DELETE FROM \`Upgrade\` WHERE \`ActionProperty\` = 'WIX_UPGRADE_DETECTED'" \
    -q "INSERT INTO \`Upgrade\` (\`UpgradeCode\`, \`VersionMax\`, \`Attributes\`, \`ActionProperty\`) VALUES ('$upgrade_code', '$msi_version', 513, 'WIX_UPGRADE_DETECTED')"
msiinfo export "$stage/$name.msi" Component | tr -d '\r' | grep -q $'^Config\t.*\t400\t' ||
    { echo "the MSI's Config component is not Permanent/NeverOverwrite" >&2; exit 1; }
msiinfo export "$stage/$name.msi" InstallExecuteSequence | tr -d '\r' |
    grep -q $'^RemoveExistingProducts\t\t1501$' ||
    { echo "the MSI does not remove an older version after InstallInitialize" >&2; exit 1; }
msiinfo export "$stage/$name.msi" Upgrade | tr -d '\r' |
    grep -q $'\t'"$msi_version"$'\t\t513\t\tWIX_UPGRADE_DETECTED$' ||
    { echo "the MSI does not replace a build of the same version" >&2; exit 1; }
mkdir -p "$(dirname "$out")"
install -m 0644 "$stage/$name.msi" "$out"
echo "$out: version $msi_version, $(stat -c %s "$out") bytes"
