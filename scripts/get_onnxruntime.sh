#!/usr/bin/env bash
# Fetch ONNX Runtime's C/C++ headers and Linux x64 shared library into third_party/onnxruntime/{include,lib}
# (gitignored) for building runtime/cpp in CI and development. Source: the npm package
# com.github.asus4.onnxruntime (ONNX Runtime packaged for Unity; 0.4.9 = ONNX Runtime 1.29, CPU provider),
# downloaded from the npm registry and checked against a pinned sha256. Re-runs are a no-op once installed.
# On a Jetson or a GPU desktop point CMake's ONNXRUNTIME_ROOT at your own ONNX Runtime instead.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=0.4.9          # ONNX Runtime 1.29.x
SHA256=e59788788818fdde1b2e522e766a21ba0f7d8391de55737abf81e32cc801785d
URL="https://registry.npmjs.org/com.github.asus4.onnxruntime/-/com.github.asus4.onnxruntime-${VERSION}.tgz"
DEST=${1:-third_party/onnxruntime}
HEADERS="package/Plugins/iOS~/onnxruntime.xcframework/ios-arm64/onnxruntime.framework/Headers"  # platform-independent
LIBDIR=package/Plugins/Linux/x64

if [[ -f "$DEST/.complete" && "$(cat "$DEST/.complete")" == "$SHA256" ]]; then
  echo "get_onnxruntime: $DEST already holds npm com.github.asus4.onnxruntime $VERSION"
  exit 0
fi
if [[ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]]; then
  echo "get_onnxruntime: this package has a Linux x86_64 library only; on $(uname -s)-$(uname -m) build ONNX Runtime" \
       "(or use your platform's release, e.g. JetPack's) and pass -DONNXRUNTIME_ROOT" >&2
  exit 1
fi
mkdir -p "$DEST"
tmp=$(mktemp -d "$DEST/.download.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "get_onnxruntime: downloading $URL (~150 MB)"
curl -fsSL --retry 3 -o "$tmp/ort.tgz" "$URL"
got=$(sha256sum "$tmp/ort.tgz" | cut -d' ' -f1)
if [[ "$got" != "$SHA256" ]]; then
  echo "get_onnxruntime: sha256 mismatch for $URL: got $got, expected $SHA256" >&2
  exit 1
fi
tar -xzf "$tmp/ort.tgz" -C "$tmp" "$HEADERS" "$LIBDIR" package/LICENSE package/ThirdPartyNotices.txt
rm -rf "$DEST/include" "$DEST/lib"
mkdir -p "$DEST/include" "$DEST/lib"
cp "$tmp/$HEADERS"/*.h "$DEST/include/"
cp "$tmp/$LIBDIR"/libonnxruntime*.so "$DEST/lib/"
ln -sf libonnxruntime.so "$DEST/lib/libonnxruntime.so.1"   # the library's SONAME
cp "$tmp/package/LICENSE" "$tmp/package/ThirdPartyNotices.txt" "$DEST/"
echo "$SHA256" > "$DEST/.complete"
echo "get_onnxruntime: ONNX Runtime (npm $VERSION) in $DEST/{include,lib}"
