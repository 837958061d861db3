//! Validation errors, and the bookkeeping that lets the reader and the rule checker report
//! together without repeating each other.

use std::fmt;

/// One thing wrong with a config, at a path such as `listeners[1].port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// Where in the document: `instance`, `listeners[1].port`,
    /// `vserver_groups[0].servers[2].weight`; empty for the file as a whole.
    pub path: String,
    pub message: String,
    /// How to fix it, when that can be told (`did you mean `protocol`?`).
    pub hint: Option<String>,
    /// Line and column, for YAML syntax errors (the parsed tree keeps no positions).
    pub location: Option<Location>,
}

/// 1-based position in the YAML text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
            hint: None,
            location: None,
        }
    }

    pub fn with_hint(mut self, hint: Option<String>) -> Self {
        self.hint = hint;
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        if let Some(Location { line, column }) = self.location {
            write!(f, "line {line}, column {column}: ")?;
        }
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, " ({hint})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Every error found in a config; never empty. Displays one error per line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors {
    errors: Vec<ConfigError>,
}

impl ConfigErrors {
    /// `None` when there is nothing to report, so an `Err` always carries an error.
    pub fn from_vec(errors: Vec<ConfigError>) -> Option<Self> {
        (!errors.is_empty()).then_some(Self { errors })
    }

    pub fn errors(&self) -> &[ConfigError] {
        &self.errors
    }

    pub fn len(&self) -> usize {
        self.errors.len()
    }

    /// Always false; here because clippy expects it beside `len`.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.errors.iter()
    }

    /// The paths of all errors, in order (handy in tests and for machine-readable output).
    pub fn paths(&self) -> Vec<&str> {
        self.errors.iter().map(|e| e.path.as_str()).collect()
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(error: ConfigError) -> Self {
        Self {
            errors: vec![error],
        }
    }
}

impl IntoIterator for ConfigErrors {
    type Item = ConfigError;
    type IntoIter = std::vec::IntoIter<ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.errors.into_iter()
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.errors.iter()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Paths the YAML reader already reported. The reader fills a field it could not read with
/// a placeholder so that list indices stay right; the rule checker then stays silent about
/// anything that depends on a placeholder, instead of adding a second, misleading error.
#[derive(Debug, Default)]
pub(crate) struct Taint {
    paths: Vec<String>,
}

impl Taint {
    pub(crate) fn add(&mut self, path: &str) {
        self.paths.push(path.to_owned());
    }

    /// Whether `path` is a reported path or lies inside one.
    pub(crate) fn covers(&self, path: &str) -> bool {
        self.paths.iter().any(|t| {
            t.is_empty()
                || path == t
                || (path.starts_with(t.as_str())
                    && matches!(path.as_bytes().get(t.len()), Some(b'.' | b'[')))
        })
    }
}

/// `parent.key`, or `key` at the top.
pub(crate) fn field(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// `parent[i]`.
pub(crate) fn index(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

/// `70000 is not in 1..=65535`: one wording for every range, from the reader and the
/// rule checker alike.
pub(crate) fn out_of_range(
    value: impl fmt::Display,
    range: &std::ops::RangeInclusive<u64>,
) -> String {
    format!("{value} is not in {}..={}", range.start(), range.end())
}

/// The candidate closest to `word`, if it is close enough to be a likely typo: a small
/// edit distance, or a known name that contains the word (`group` → `server_group`).
pub(crate) fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let word_lower = word.to_ascii_lowercase();
    let allowed = (word.chars().count() / 3).clamp(1, 3);
    let by_distance = candidates
        .iter()
        .map(|c| (edit_distance(&word_lower, c), *c))
        .filter(|(d, _)| *d <= allowed)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c);
    if by_distance.is_some() {
        return by_distance;
    }
    if word_lower.len() < 4 {
        return None;
    }
    let mut containing = candidates
        .iter()
        .filter(|c| c.contains(word_lower.as_str()));
    match (containing.next(), containing.next()) {
        (Some(only), None) => Some(*only),
        _ => None,
    }
}

/// `did you mean `x`?` for the closest candidate.
pub(crate) fn did_you_mean(word: &str, candidates: &[&str]) -> Option<String> {
    closest(word, candidates).map(|c| format!("did you mean `{c}`?"))
}

/// Edit distance that counts a swap of two neighbouring characters as one edit (optimal
/// string alignment): `wieght` is one typo away from `weight`, not two.
fn edit_distance(a: &str, b: &str) -> usize {
    strsim::osa_distance(a, b)
}

/// Orders errors by where they sit in the document: top-level fields in the order the
/// config contract lists them, list entries by index. Errors of one entry stay together
/// and keep the order they were found in (type errors before rule errors).
pub(crate) fn sort_by_document_order(errors: &mut [ConfigError], top_level_order: &[&str]) {
    errors.sort_by_cached_key(|e| {
        let path = e.path.as_str();
        let top_end = path.find(['.', '[']).unwrap_or(path.len());
        let top = &path[..top_end];
        let rank = if top.is_empty() {
            0
        } else {
            top_level_order
                .iter()
                .position(|f| *f == top)
                .map_or(top_level_order.len() + 1, |p| p + 1)
        };
        let entry = path[top_end..]
            .strip_prefix('[')
            .and_then(|rest| rest.split(']').next())
            .and_then(|i| i.parse::<usize>().ok());
        (rank, entry)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("port", "port"), 0);
        assert_eq!(edit_distance("prot", "port"), 1);
        assert_eq!(edit_distance("wieght", "weight"), 1);
        assert_eq!(edit_distance("adress", "address"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn closest_suggests_typos_and_contained_names() {
        let fields = [
            "name",
            "protocol",
            "address",
            "port",
            "server_group",
            "udp_timeout",
        ];
        assert_eq!(closest("adress", &fields), Some("address"));
        assert_eq!(closest("Port", &fields), Some("port"));
        assert_eq!(closest("group", &fields), Some("server_group"));
        assert_eq!(closest("proto", &fields), Some("protocol"));
        assert_eq!(closest("colour", &fields), None);
        assert_eq!(closest("x", &fields), None);
    }

    #[test]
    fn taint_covers_the_path_and_what_is_inside_it() {
        let mut t = Taint::default();
        t.add("listeners[1]");
        assert!(t.covers("listeners[1]"));
        assert!(t.covers("listeners[1].port"));
        assert!(!t.covers("listeners[10].port"));
        assert!(!t.covers("listeners"));
        t.add("");
        assert!(t.covers("anything"));
    }

    #[test]
    fn display_puts_the_path_first_one_error_per_line() {
        let errors = ConfigErrors::from_vec(vec![
            ConfigError::new("listeners[1].port", "70000 is not in 1..=65535"),
            ConfigError::new("listeners[0].prot", "unknown field `prot`")
                .with_hint(Some("did you mean `protocol`?".to_owned())),
            ConfigError {
                location: Some(Location { line: 3, column: 5 }),
                ..ConfigError::new("", "YAML syntax error")
            },
        ])
        .unwrap();
        assert_eq!(
            errors.to_string(),
            "listeners[1].port: 70000 is not in 1..=65535\n\
             listeners[0].prot: unknown field `prot` (did you mean `protocol`?)\n\
             line 3, column 5: YAML syntax error"
        );
        assert!(ConfigErrors::from_vec(Vec::new()).is_none());
    }

    #[test]
    fn sorting_follows_the_document() {
        let mut errors: Vec<_> = [
            "listeners[10].port",
            "listeners[2]",
            "instance",
            "listeners",
            "bogus",
            "acls[0].name",
            "listeners[2].name",
        ]
        .into_iter()
        .map(|p| ConfigError::new(p, "x"))
        .collect();
        sort_by_document_order(&mut errors, &["instance", "acls", "listeners"]);
        let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "instance",
                "acls[0].name",
                "listeners",
                "listeners[2]",
                "listeners[2].name",
                "listeners[10].port",
                "bogus"
            ]
        );
    }
}
