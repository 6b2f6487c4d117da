//! The `civicload` binary: glue between the command line and `civicload::app`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    limit_malloc();
    civicload::backfill::process_started();
    let cli = civicload::cli::Cli::parse();
    civicload::ui::log::init(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let code = runtime.block_on(civicload::app::run(cli));
    std::process::ExitCode::from(code)
}

/// glibc's malloc, tuned for the load's memory: at most 2 arenas (each transform thread
/// otherwise gets its own, each holding freed memory), and blocks of 1 MB or more (page
/// batches, COPY chunks, HTTP bodies) mapped and unmapped on their own instead of reused
/// from an arena after glibc raised the threshold. Peak RSS of a 200k-page load: 222 MB
/// as glibc has it, 133 MB with both, load phase unchanged (README, "Search at scale").
/// The environment's MALLOC_ARENA_MAX and MALLOC_MMAP_THRESHOLD_ still win.
fn limit_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let unset = |var| std::env::var_os(var).is_none();
        // SAFETY: mallopt only sets allocator parameters; called before any thread starts.
        unsafe {
            if unset("MALLOC_ARENA_MAX") {
                libc::mallopt(libc::M_ARENA_MAX, 2);
            }
            if unset("MALLOC_MMAP_THRESHOLD_") {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
            }
        }
    }
}
