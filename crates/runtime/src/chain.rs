//! An error and its sources in one line, for logs and one-line messages:
//! `commit failed: database is locked: busy`. Errors keep their causes as
//! `#[source]` fields; this is where they are read back.

use std::error::Error;
use std::fmt;

/// Displays an error followed by each of its sources, separated by `: `.
/// A source whose text is already shown is skipped, so errors that also
/// print their source (`#[error("upload failed: {0}")]`) are not doubled.
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.to_string();
        let mut next = self.0.source();
        while let Some(cause) = next {
            let text = cause.to_string();
            if !text.is_empty() && !shown.contains(&text) {
                shown.push_str(": ");
                shown.push_str(&text);
            }
            next = cause.source();
        }
        f.write_str(&shown)
    }
}

impl fmt::Debug for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// `error` and its sources as one line.
pub fn chain(error: &(dyn Error + 'static)) -> String {
    Chain(error).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct E(&'static str, Option<Box<E>>);
    impl fmt::Display for E {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }
    impl Error for E {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn every_cause_once() {
        let e = E(
            "commit failed",
            Some(Box::new(E("locked", Some(Box::new(E("busy", None)))))),
        );
        assert_eq!(chain(&e), "commit failed: locked: busy");
        // A parent that already printed its source does not repeat it.
        let e = E("upload: timed out", Some(Box::new(E("timed out", None))));
        assert_eq!(chain(&e), "upload: timed out");
        assert_eq!(chain(&E("alone", None)), "alone");
    }
}
