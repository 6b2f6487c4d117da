//! Standard output that a closed pipe does not crash: `civicload status --json | head`
//! ends `head`'s read early, and `println!` would then panic. The first write that finds
//! the pipe closed stops all later output; the command still finishes its work and exits
//! with its own code (a backfill whose summary nobody reads is still a backfill).

use std::io::{ErrorKind, Write};
use std::sync::atomic::{AtomicBool, Ordering};

static CLOSED: AtomicBool = AtomicBool::new(false);

/// Writes one line to standard output (see [`crate::outln`]).
pub fn line(args: std::fmt::Arguments) {
    if CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(args)
        .and_then(|_| out.write_all(b"\n"))
        .and_then(|_| out.flush());
    if let Err(e) = written {
        if e.kind() == ErrorKind::BrokenPipe {
            CLOSED.store(true, Ordering::Relaxed);
        }
    }
}

/// `println!` for civicload's output: a closed standard output ends the output, not the
/// process (see the module comment).
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::ui::out::line(format_args!($($arg)*))
    };
}
