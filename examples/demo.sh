#!/usr/bin/env bash
# One command: install etcd if missing, then run the election demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/install-etcd
cargo build --quiet --example elect --example demo
exec target/debug/examples/demo
