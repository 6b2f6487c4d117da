//! Log setup: lines on stderr as text (colour only on an interactive terminal without
//! `NO_COLOR`) or as JSON objects (`--log-format json`), and drawn above the progress
//! bars instead of through them.

use std::io::Write;
use std::sync::Mutex;

use indicatif::MultiProgress;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// How log lines are written (`--log-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, message and fields), for log shippers.
    Json,
}

/// The filter when `RUST_LOG` is not set.
const DEFAULT_FILTER: &str = "info,sqlx=warn";

/// Sends logs to stderr; `RUST_LOG` overrides the default level.
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(AboveBars)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder.with_ansi(super::term::stderr_color()).try_init(),
        // The message and the event's fields at the top level, beside time and level.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_ansi(false)
            .try_init(),
    };
}

/// The bars being drawn, if any: a log line suspends them while it is written.
static BARS: Mutex<Option<MultiProgress>> = Mutex::new(None);

/// Registers the bars that log lines must not tear (`None` once they are cleared).
pub(crate) fn set_bars(bars: Option<MultiProgress>) {
    *BARS.lock().unwrap_or_else(|e| e.into_inner()) = bars;
}

/// stderr, with the bars lifted while an event is written.
struct AboveBars;

/// One event's bytes, written at once when the formatter is done with it.
struct EventBuffer(Vec<u8>);

impl<'a> MakeWriter<'a> for AboveBars {
    type Writer = EventBuffer;

    fn make_writer(&'a self) -> Self::Writer {
        EventBuffer(Vec::with_capacity(256))
    }
}

impl Write for EventBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for EventBuffer {
    fn drop(&mut self) {
        let write = || {
            let _ = std::io::stderr().lock().write_all(&self.0);
        };
        let bars = BARS.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match bars {
            Some(bars) => bars.suspend(write),
            None => write(),
        }
    }
}
