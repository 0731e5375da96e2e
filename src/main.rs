//! The `outrigger` binary: read the environment, start the runtime, run until a signal.

use std::process::ExitCode;

use clap::Parser;
use mimalloc::MiMalloc;
use outrigger::config::{Args, Config};
use tokio_util::sync::CancellationToken;

/// mimalloc instead of glibc's malloc: the request path allocates small, short-lived buffers
/// on every request, which mimalloc serves from thread-local pages (measured in
/// bench/README.md).
#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

/// mimalloc's `mi_option_purge_delay` (v2 header, pinned by `libmimalloc-sys = "=0.1.49"`; the
/// crate exports no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> ExitCode {
    // Return freed pages to the OS at once instead of after a delay that an idle process never
    // reaches: a large registry update frees megabytes of parse buffers, and without this RSS
    // stays at its peak (1,000 x 20 endpoints: 66 MB against 55 MB, bench/memory.sh).
    // SAFETY: sets a process-wide allocator option before any thread is started.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    let config = match Config::from_args(Args::parse()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("outrigger: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    outrigger::telemetry::init_logging(&config.log_filter, config.log_json);
    // The main runtime is single-threaded: with one worker it runs everything (no work
    // stealing, no cross-thread wake-ups; measured in bench/README.md); with more, it runs the
    // control plane and accept loops and the requests go to thread-per-core workers
    // (outrigger::workers).
    let mut builder = tokio::runtime::Builder::new_current_thread();
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("outrigger: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let on_signal = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            on_signal.cancel();
        });
        outrigger::run(config, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("outrigger: {e}");
            ExitCode::from(1)
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM; only SIGINT will stop outrigger");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
