//! The `civicload` binary: glue between the command line and `civicload::app`.

use clap::Parser;

fn main() -> std::process::ExitCode {
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
