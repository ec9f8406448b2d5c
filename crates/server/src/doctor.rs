//! What `patchbay-server doctor` reports: one finding per precondition, each `ok`, `WARN`
//! (the operator should act) or `FAIL` (something the server reports is wrong until they do).
//! The checks live beside what they check ([`crate::Service::cve_data_findings`]); the CLI
//! prints them and exits 1 when any is not `ok`.

use std::fmt;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    /// Nothing to do.
    Ok,
    /// The operator should act soon (e.g. CVE data older than `cve.max_age_days`).
    Warn,
    /// What the server reports is wrong or unknown until the operator acts (e.g. no CVE data).
    Fail,
}

impl Verdict {
    /// The label `doctor` prints, padded to one width: `ok   `, `WARN `, `FAIL `.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Ok => "ok   ",
            Verdict::Warn => "WARN ",
            Verdict::Fail => "FAIL ",
        }
    }
}

/// One line of `doctor`'s report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// How the check came out.
    pub verdict: Verdict,
    /// What was found and, when not ok, what to do.
    pub text: String,
}

impl Finding {
    /// A finding with `verdict` saying `text`.
    pub fn new(verdict: Verdict, text: impl Into<String>) -> Finding {
        Finding {
            verdict,
            text: text.into(),
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.verdict.label(), self.text)
    }
}
