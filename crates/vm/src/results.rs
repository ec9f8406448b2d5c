//! The guest → host result protocol: serial console lines `PB: <key> <value...>`.

use crate::error::VmError;
use crate::qemu::{VmExit, VmRun};

/// Every result line starts with this (at the very start of a console line).
pub const RESULT_PREFIX: &str = "PB: ";
/// Key of the lines `pb_check`/`pb_expect_contains` print: `PB: check <name> ok|fail <status>`.
pub const CHECK_KEY: &str = "check";

/// One `PB: <key> <value...>` line; `value` is the rest of the line, trimmed (may be empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultLine {
    /// The first word after the prefix, e.g. `check` or `boot_ms`; never empty.
    pub key: String,
    /// The rest of the line, e.g. `cmdline ok` or `3120`.
    pub value: String,
}

/// Parses a console line (without line terminator); `None` for anything else.
pub fn parse_result_line(line: &str) -> Option<ResultLine> {
    let rest = line.strip_prefix(RESULT_PREFIX)?.trim();
    let (key, value) = match rest.split_once(char::is_whitespace) {
        Some((key, value)) => (key, value.trim()),
        None => (rest, ""),
    };
    if key.is_empty() {
        return None;
    }
    Some(ResultLine {
        key: key.to_owned(),
        value: value.to_owned(),
    })
}

/// The names of the checks that passed, or an error (with the full serial log) when the run
/// did not complete, any check failed or was malformed, or `/scenario.sh` exited non-zero.
pub fn check_report(run: &VmRun) -> Result<Vec<String>, VmError> {
    run.expect_completed()?;
    let mut passed = Vec::new();
    let mut failed = Vec::new();
    for value in run.values(CHECK_KEY) {
        let mut words = value.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some(name), Some("ok"), None) => passed.push(name.to_owned()),
            (Some(name), Some("fail"), status) => failed.push(format!(
                "{name} (exit status {})",
                status.unwrap_or("unknown")
            )),
            _ => failed.push(format!(
                "malformed check line `{RESULT_PREFIX}{CHECK_KEY} {value}`"
            )),
        }
    }
    if !failed.is_empty() {
        return Err(VmError::ChecksFailed {
            failed,
            serial_log: run.serial_log.clone(),
        });
    }
    match run.scenario_status {
        Some(0) => Ok(passed),
        Some(status) => Err(VmError::ScenarioFailed {
            status,
            serial_log: run.serial_log.clone(),
        }),
        // `expect_completed` passed, so the end marker was seen; an unparsable status is a bug
        // in /init, reported the same way as an incomplete run.
        None => Err(VmError::RunIncomplete {
            exit: VmExit::NoEndMarker,
            wall: run.wall,
            qemu_stderr: run.qemu_stderr.clone(),
            serial_log: run.serial_log.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use std::time::Duration;

    use super::*;

    fn line(key: &str, value: &str) -> Option<ResultLine> {
        Some(ResultLine {
            key: key.to_owned(),
            value: value.to_owned(),
        })
    }

    #[test]
    fn parses_result_lines() {
        assert_eq!(
            parse_result_line("PB: boot_ms 3120"),
            line("boot_ms", "3120")
        );
        assert_eq!(
            parse_result_line("PB: check cmdline ok"),
            line("check", "cmdline ok")
        );
        assert_eq!(
            parse_result_line("PB: note  two  spaces  "),
            line("note", "two  spaces")
        );
        assert_eq!(parse_result_line("PB: flag"), line("flag", ""));
        assert_eq!(parse_result_line("PB: "), None);
        assert_eq!(parse_result_line("PB:x y"), None);
        assert_eq!(parse_result_line(" PB: indented no"), None);
        assert_eq!(parse_result_line("[    1.0] PB: kernel"), None);
        assert_eq!(parse_result_line("hello"), None);
    }

    fn run_with(lines: &[&str], exit: VmExit, scenario_status: Option<i32>) -> VmRun {
        VmRun {
            serial_log: format!("boot noise\n{}\n", lines.join("\n")),
            lines: lines.iter().filter_map(|l| parse_result_line(l)).collect(),
            exit,
            boot_to_init: Some(Duration::from_secs(3)),
            wall: Duration::from_secs(5),
            guest_uptime_at_init: None,
            scenario_status,
            qemu_stderr: String::new(),
        }
    }

    #[test]
    fn values_by_key() {
        let run = run_with(
            &["PB: a 1", "PB: b 2", "PB: a 3"],
            VmExit::Completed,
            Some(0),
        );
        assert_eq!(run.values("a"), vec!["1", "3"]);
        assert!(run.values("c").is_empty());
    }

    #[test]
    fn report_lists_passed_checks() {
        let run = run_with(
            &["PB: check one ok", "PB: value 7", "PB: check two ok"],
            VmExit::Completed,
            Some(0),
        );
        assert_eq!(check_report(&run).unwrap(), vec!["one", "two"]);
    }

    #[test]
    fn report_fails_on_failed_check_with_log() {
        let run = run_with(
            &["PB: check one ok", "PB: check two fail 3"],
            VmExit::Completed,
            Some(0),
        );
        let error = check_report(&run).unwrap_err().to_string();
        assert!(
            error.starts_with("scenario checks failed: two (exit status 3)"),
            "{error}"
        );
        assert!(error.contains("boot noise"), "{error}");
        assert!(error.contains("PB: check one ok"), "{error}");
    }

    #[test]
    fn report_fails_on_malformed_check() {
        let run = run_with(&["PB: check weird"], VmExit::Completed, Some(0));
        let error = check_report(&run).unwrap_err().to_string();
        assert!(error.contains("malformed check line"), "{error}");
    }

    #[test]
    fn report_fails_on_incomplete_run_with_log() {
        let run = run_with(&["PB: check one ok"], VmExit::TimedOut, None);
        let error = check_report(&run).unwrap_err().to_string();
        assert!(error.contains("timed out"), "{error}");
        assert!(error.contains("boot noise"), "{error}");
        let run = run_with(&[], VmExit::QemuFailed(1), None);
        assert!(
            check_report(&run)
                .unwrap_err()
                .to_string()
                .contains("exit status 1"),
            "{:?} does not contain {:?}",
            check_report(&run).unwrap_err().to_string(),
            "exit status 1"
        );
    }

    #[test]
    fn report_fails_on_scenario_status() {
        let run = run_with(&["PB: check one ok"], VmExit::Completed, Some(2));
        let error = check_report(&run).unwrap_err().to_string();
        assert!(error.contains("exited with status 2"), "{error}");
    }
}
