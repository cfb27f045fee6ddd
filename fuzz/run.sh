#!/usr/bin/env bash
# Runs every fuzz target for a bounded time and fails on the first crash,
# leak, timeout or out-of-memory. Usage: fuzz/run.sh SECONDS_PER_TARGET
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`).
# A crash leaves its input in fuzz/artifacts/<target>/; turn it into a
# regression test beside the parser, then fix the parser.
set -euo pipefail
cd "$(dirname "$0")"

seconds=${1:?usage: fuzz/run.sh SECONDS_PER_TARGET}
targets=(imap_frontend pop3_frontend smtp_frontend sasl_decode capability_rewrite upstream_replies smtp_relay_filter)

./seeds.sh
# Build once; the targets then run as built, so the fuzzing time is not
# spent rebuilding the proxy.
cargo +nightly fuzz build --release
triple=$(rustc +nightly -vV | sed -n 's/^host: //p')
bin_dir=target/$triple/release

for target in "${targets[@]}"; do
    echo "== fuzz $target for ${seconds}s"
    mkdir -p "artifacts/$target"
    log=$(mktemp)
    if ! "$bin_dir/$target" "corpus/$target" -artifact_prefix="artifacts/$target/" \
        -max_total_time="$seconds" -max_len=40000 -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log"
        rm -f "$log"
        echo "fuzz target $target failed; the input is in fuzz/artifacts/$target/" >&2
        exit 1
    fi
    grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|#[0-9]+.*DONE)' "$log" | sed "s/^/$target: /" || true
    rm -f "$log"
done
echo "fuzz: all ${#targets[@]} targets ran ${seconds}s each without a crash"
