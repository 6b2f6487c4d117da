//! An error as one line: what failed, then each cause once.
//!
//! anyhow's `{:#}` appends every cause of the chain to the message, but a library error
//! usually quotes its cause already (sqlx's "error communicating with database: {0}",
//! thiserror's `{source}`), so a failed connection read "cannot connect: X: Y. Is the
//! server running?: X: Y: Y" (the socket error three times). Here a cause whose text the
//! line already holds is left out.

/// The error and the causes its message does not already quote, joined by ": ".
pub fn one_line(e: &anyhow::Error) -> String {
    join_causes(e.chain().map(|c| c.to_string()))
}

fn join_causes(messages: impl IntoIterator<Item = String>) -> String {
    let mut line = String::new();
    for message in messages {
        let message = message.trim();
        if message.is_empty() || line.contains(message) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(message);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_quoted_by_its_error_is_printed_once() {
        let io = "No such file or directory (os error 2)";
        let sqlx = format!("error communicating with database: {io}");
        let store = format!(
            "cannot connect to PostgreSQL at /var/run/postgresql:5432: {sqlx}. Is the server running?"
        );
        let line = join_causes([store.clone(), sqlx, io.to_string()]);
        assert_eq!(line, store);
        assert_eq!(line.matches(io).count(), 1);
    }

    #[test]
    fn context_and_a_cause_it_does_not_quote_are_both_kept() {
        let e = anyhow::Error::new(std::io::Error::other("connection refused"))
            .context("reading the sites table at https://example.org/sites.json");
        assert_eq!(
            one_line(&e),
            "reading the sites table at https://example.org/sites.json: connection refused"
        );
    }
}
