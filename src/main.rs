//! The `outrigger` binary: read the environment, start the runtime, run until a signal.

use std::process::ExitCode;

use clap::Parser;
use mimalloc::MiMalloc;
use outrigger::config::{Args, Command, Config};
use outrigger::lifecycle::Stop;

/// mimalloc instead of glibc's malloc: the request path allocates small, short-lived buffers
/// on every request, which mimalloc serves from thread-local pages (measured in
/// bench/HISTORY.md).
#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

/// mimalloc's `mi_option_purge_delay` (v2 header, pinned by `libmimalloc-sys = "=0.1.49"`; the
/// crate exports no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> ExitCode {
    // Keep freed pages for five seconds before returning them to the OS: returning them at once
    // (delay 0) made the request path fault pages back in (0.08 page faults and 0.015 madvise
    // calls a request, about 4% of the proxy's cycles), and with a one-second delay a
    // 10,000-endpoint update every 250 ms still returned and refaulted pages, a third of its
    // CPU (bench/HISTORY.md). What registry updates free is returned by `release_freed_memory`
    // once they pause.
    // SAFETY: sets a process-wide allocator option before any thread is started.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    let mut args = Args::parse();
    if let Some(Command::WaitReady { timeout }) = args.command.take() {
        return outrigger::wait_ready::main(&args.admin_listen, &timeout);
    }
    let config = match Config::from_args(args) {
        Ok(config) => config,
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("outrigger: configuration error: {e}");
            }
            return ExitCode::from(2);
        }
    };
    outrigger::telemetry::init_logging(&config.log_filter, config.log_json);
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    // The main runtime runs the control plane (discovery, health checks, admin) and the accept
    // loops; requests are served by thread-per-core workers (outrigger::workers).
    let mut builder = tokio::runtime::Builder::new_current_thread();
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("outrigger: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        let stop = Stop::new();
        tokio::spawn(on_signals(stop.clone()));
        tokio::spawn(release_freed_memory());
        outrigger::run(config, stop).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("outrigger: {e}");
            ExitCode::from(1)
        }
    }
}

/// How long mimalloc keeps a freed page before returning it to the OS.
const PURGE_DELAY_MS: std::ffi::c_long = 5000;

/// Returns pages freed by this (control-plane) thread to the OS once registry updates pause.
///
/// mimalloc returns delayed pages only while the thread that owns them keeps allocating, which
/// an idle process never does: parsing a large node set frees megabytes that would otherwise
/// stay resident (1,000 x 20 endpoints: 68 MB instead of 54 MB, bench/memory.sh). Node sets are
/// parsed and built on this thread, so this is where their memory is owned and returned.
///
/// Not while updates keep coming: the next update would fault the same pages back in, and
/// returning and refaulting them was 40% of the CPU a 10,000-endpoint update cost
/// (bench/HISTORY.md). A pause is as long as mimalloc's own purge delay: with half a second,
/// updates a second apart returned and refaulted 2,100 pages each (86-88 M instructions an
/// update instead of 77 M, bench/HISTORY.md session 9).
async fn release_freed_memory() {
    const TICK_MS: std::ffi::c_long = 250;
    let mut every = tokio::time::interval(std::time::Duration::from_millis(TICK_MS as u64));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = outrigger::publisher::updates_received();
    let mut quiet_ticks = 0;
    loop {
        every.tick().await;
        let now = outrigger::publisher::updates_received();
        if now != seen {
            seen = now;
            quiet_ticks = 0;
            continue;
        }
        quiet_ticks += 1;
        if quiet_ticks < PURGE_DELAY_MS / TICK_MS {
            continue;
        }
        // SAFETY: collects the calling thread's heap; safe at any time.
        unsafe { libmimalloc_sys::mi_collect(true) };
    }
}

/// The first SIGTERM or SIGINT starts the ordered stop; another skips its delay.
async fn on_signals(stop: Stop) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM; only SIGINT will stop outrigger");
            let _ = tokio::signal::ctrl_c().await;
            stop.hurry();
            return;
        }
    };
    loop {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        }
        if stop.is_requested() {
            tracing::info!("stopping now: the shutdown delay is skipped");
            stop.hurry();
            return;
        }
        stop.request();
    }
}
