#!/usr/bin/env bash
# Builds every station as a WebAssembly component and copies it next to its
# sources: stations/<name>.wasm for the real ones, stations/testing/<name>.wasm
# for the test ones. Runs from any working directory.
#
# Needs the toolchain of rust-toolchain.toml with the wasm32-wasip2 target
# (installing it is not this script's job). Extra arguments go to cargo,
# e.g. ./build.sh --locked
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

stations=(tick delay echo deploy_delta tokens)
testing=(trap spin hog badinit marker marker2 escape v01 inputs)

cargo build --release --target wasm32-wasip2 "$@"

# Honour CARGO_TARGET_DIR if set; the default is stations/target.
out="${CARGO_TARGET_DIR:-$here/target}/wasm32-wasip2/release"

copy() { # copy NAME DEST
    local src="$out/$1.wasm"
    if [[ ! -f "$src" ]]; then
        echo "build.sh: missing $src" >&2
        exit 1
    fi
    # Components start with \0asm then version 0d 00 01 00 (core modules: 01 00 00 00).
    if [[ "$(head -c 8 "$src" | od -An -tx1 | tr -d ' \n')" != "0061736d0d000100" ]]; then
        echo "build.sh: $src is not a WebAssembly component" >&2
        exit 1
    fi
    cp "$src" "$2"
    printf '%10d  %s\n' "$(stat -c %s "$2")" "$2"
}

for name in "${stations[@]}"; do
    copy "$name" "$here/$name.wasm"
done
for name in "${testing[@]}"; do
    copy "$name" "$here/testing/$name.wasm"
done

# The hot-deploy tests patch the marker stations' 16-byte constant in place:
# it must appear exactly once in each file.
for name in marker marker2; do
    n="$(grep -aoF RINGHOST-MARK-00 "$here/testing/$name.wasm" | wc -l)"
    if [[ "$n" != 1 ]]; then
        echo "build.sh: RINGHOST-MARK-00 appears $n times in testing/$name.wasm (want 1)" >&2
        exit 1
    fi
done
