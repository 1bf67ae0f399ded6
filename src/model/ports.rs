//! Port lists as annotations write them: `25,587,3306`, ranges `4000-4100`, or port names.

use std::collections::BTreeSet;

/// A set of ports, some by number or range and some by container-port name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortSet {
    ranges: Vec<(u16, u16)>,
    names: BTreeSet<String>,
}

/// An entry of a port list that is neither a port, a range nor a port name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid port list entry {entry:?}: expected a port (1-65535), a range a-b, or a port name"
)]
pub struct PortSetError {
    pub entry: String,
}

impl PortSet {
    /// Parses a comma-separated list. Invalid entries are returned as errors alongside
    /// the set of the valid ones, so one typo does not disable the rest.
    pub fn parse(list: &str) -> (Self, Vec<PortSetError>) {
        let mut set = Self::default();
        let mut errors = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            match parse_entry(entry) {
                Some(Entry::Range(a, b)) => set.ranges.push((a, b)),
                Some(Entry::Name(n)) => {
                    set.names.insert(n.to_string());
                }
                None => errors.push(PortSetError {
                    entry: entry.to_string(),
                }),
            }
        }
        (set, errors)
    }

    /// Parses a list of numbers and ranges only, failing on the first bad entry (for flags).
    pub fn parse_strict(list: &str) -> Result<Self, PortSetError> {
        let (set, errors) = Self::parse(list);
        match errors.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(set),
        }
    }

    /// Whether `port`, known by `name` on the pod when it has one, is in the set.
    pub fn contains(&self, port: u16, name: Option<&str>) -> bool {
        self.ranges.iter().any(|&(a, b)| a <= port && port <= b)
            || name.is_some_and(|n| self.names.contains(n))
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty() && self.names.is_empty()
    }
}

enum Entry<'a> {
    Range(u16, u16),
    Name(&'a str),
}

fn parse_entry(entry: &str) -> Option<Entry<'_>> {
    let port = |s: &str| s.trim().parse::<u16>().ok().filter(|p| *p > 0);
    if let Some((a, b)) = entry.split_once('-')
        && let (Some(a), Some(b)) = (port(a), port(b))
    {
        return (a <= b).then_some(Entry::Range(a, b));
    }
    if let Some(p) = port(entry) {
        return Some(Entry::Range(p, p));
    }
    let is_name = entry.len() <= 15
        && entry.bytes().any(|b| b.is_ascii_lowercase())
        && entry
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    is_name.then_some(Entry::Name(entry))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_ranges_and_names() {
        let (set, errors) = PortSet::parse("25, 4000-4002,admin-http");
        assert!(errors.is_empty());
        assert!(set.contains(25, None));
        assert!(set.contains(4001, None));
        assert!(!set.contains(4003, None));
        assert!(set.contains(9999, Some("admin-http")));
        assert!(!set.contains(9999, Some("http")));
    }

    #[test]
    fn bad_entries_are_reported_and_the_rest_kept() {
        let (set, errors) = PortSet::parse("3306,70000,5-1,UPPER");
        assert!(set.contains(3306, None));
        let bad: Vec<_> = errors.iter().map(|e| e.entry.as_str()).collect();
        assert_eq!(bad, ["70000", "5-1", "UPPER"]);
        assert!(PortSet::parse_strict("25,nope!").is_err());
    }
}
