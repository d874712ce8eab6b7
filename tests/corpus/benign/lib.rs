//! Line filters for the log viewer.

use std::io::{self, BufRead};

/// Options read from the command line.
#[derive(Debug, Default)]
pub struct Options {
    /// Match without regard to case.
    pub ignore_case: bool,
    /// Skip lines written by the system logger itself.
    pub ignore_system: bool,
    /// The pattern to look for.
    pub pattern: String,
}

/// Returns the lines of `input` that contain the pattern.
pub fn filter<R: BufRead>(input: R, opts: &Options) -> io::Result<Vec<String>> {
    let needle = if opts.ignore_case { opts.pattern.to_lowercase() } else { opts.pattern.clone() };
    let mut out = Vec::new();
    for line in input.lines() {
        let line = line?;
        if opts.ignore_system && line.starts_with("systemd") {
            continue;
        }
        let hay = if opts.ignore_case { line.to_lowercase() } else { line.clone() };
        if hay.contains(&needle) {
            out.push(line);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignores_case_when_asked() {
        let opts = Options { ignore_case: true, pattern: "error".into(), ..Default::default() };
        let got = filter("ERROR one\nok\n".as_bytes(), &opts).unwrap();
        assert_eq!(got, vec!["ERROR one"]);
    }
}
