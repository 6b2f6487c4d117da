//! What the output goes to: an interactive terminal (bars, colour) or not (CI logs, cron
//! mail, files, pipes), decided in one place.

use std::io::IsTerminal;

/// Whether stderr is a terminal a person watches: bars and colour are drawn there. A CI
/// job's pseudo-terminal (`CI` set to anything but `false`) does not count: its log is a
/// file that someone reads later, where redrawn bars become thousands of lines.
pub fn stderr_is_interactive() -> bool {
    std::io::stderr().is_terminal() && !running_in_ci(std::env::var_os("CI").as_deref())
}

/// Whether log lines on stderr may carry ANSI colour codes: only on an interactive
/// terminal, and never when `NO_COLOR` is set to a non-empty value (no-color.org).
pub fn stderr_color() -> bool {
    stderr_is_interactive() && !no_color(std::env::var_os("NO_COLOR").as_deref())
}

fn running_in_ci(ci: Option<&std::ffi::OsStr>) -> bool {
    ci.is_some_and(|v| !v.is_empty() && v != "false")
}

fn no_color(value: Option<&std::ffi::OsStr>) -> bool {
    value.is_some_and(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn ci_counts_unless_unset_empty_or_false() {
        assert!(!running_in_ci(None));
        assert!(!running_in_ci(Some(OsStr::new(""))));
        assert!(!running_in_ci(Some(OsStr::new("false"))));
        assert!(running_in_ci(Some(OsStr::new("true"))));
        assert!(running_in_ci(Some(OsStr::new("1"))));
    }

    #[test]
    fn no_color_is_any_non_empty_value() {
        assert!(!no_color(None));
        assert!(!no_color(Some(OsStr::new(""))));
        assert!(no_color(Some(OsStr::new("1"))));
        assert!(no_color(Some(OsStr::new("0"))));
    }
}
