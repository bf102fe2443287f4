#!/usr/bin/env bash
# Builds the autodriver as a static binary (no glibc NSS at run time), so it can be copied
# into any image. Prints its path. See docs/autodriver.md.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-$HOME/.cache/tango-rs/target}/static
# Its own target directory: the static flags must not invalidate the daemon's build.
RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR="$target" \
  cargo build --release --locked --no-default-features --bin autodriver \
  --target x86_64-unknown-linux-gnu >&2
echo "$target/x86_64-unknown-linux-gnu/release/autodriver"
