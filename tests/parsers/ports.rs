//! Port-list annotations (`config.linkerd.io/opaque-ports`, `skip-inbound-ports`):
//! `PortSet::parse` keeps every valid entry and reports each invalid one.

use meshlink::model::PortSet;
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Good {
    Port(u16),
    Range(u16, u16),
    Name(String),
}

impl Good {
    fn text(&self) -> String {
        match self {
            Good::Port(p) => p.to_string(),
            Good::Range(a, b) => format!("{a}-{b}"),
            Good::Name(n) => n.clone(),
        }
    }

    fn covers(&self, port: u16) -> bool {
        match *self {
            Good::Port(p) => p == port,
            Good::Range(a, b) => a <= port && port <= b,
            Good::Name(_) => false,
        }
    }
}

fn good() -> impl Strategy<Value = Good> {
    prop_oneof![
        (1u16..).prop_map(Good::Port),
        (1u16.., 1u16..).prop_map(|(a, b)| Good::Range(a.min(b), a.max(b))),
        // A port name: at most 15 characters, lowercase letters, digits and '-', one letter at least.
        "[a-z0-9-]{0,7}[a-z][a-z0-9-]{0,7}".prop_map(Good::Name),
    ]
}

fn bad() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("0".to_string()),
        (65536u64..).prop_map(|p| p.to_string()),
        (2u16.., 1u16..).prop_filter_map("a reversed range", |(a, b)| (a > b)
            .then(|| format!("{a}-{b}"))),
        "[0-9]{1,5}-",
        "-[0-9]{1,5}",
        "0-[0-9]{1,4}",
        "[A-Z][A-Za-z0-9-]{0,10}",
        "[a-z]{16,24}",
        "[a-z0-9]{0,5}[_!@#%./:é][a-z0-9]{0,5}",
    ]
}

/// An entry with the spaces and tabs around it that the parser ignores.
fn padded(entry: &str, pad: usize) -> String {
    let pad = [" ", "\t", "  "][pad % 3];
    format!("{pad}{entry}{pad}")
}

const TOKENS: &[&str] = &[
    "25",
    "4000",
    "-",
    "4100",
    ",",
    " ",
    "0",
    "65535",
    "65536",
    "http",
    "admin-http",
    "A",
    "_",
    "1-2",
    "2-1",
    ",,",
    "\t",
    "\u{a0}",
];

proptest! {
    #![proptest_config(crate::config(512))]

    #[test]
    fn valid_entries_are_kept_and_each_invalid_one_is_reported(
        entries in proptest::collection::vec(
            prop_oneof![3 => good().prop_map(Ok), 1 => bad().prop_map(Err)],
            0..12,
        ),
        pads in proptest::collection::vec(0usize..3, 12),
        empty_entries in any::<bool>(),
        probes in proptest::collection::vec(any::<u16>(), 8),
    ) {
        let mut texts: Vec<String> = entries
            .iter()
            .zip(&pads)
            .map(|(e, pad)| padded(&e.as_ref().map_or_else(Clone::clone, Good::text), *pad))
            .collect();
        if empty_entries {
            texts.insert(texts.len() / 2, " ".into());
            texts.push(String::new());
        }
        let list = texts.join(",");
        let (set, errors) = PortSet::parse(&list);

        let want_errors: Vec<&str> = entries.iter().filter_map(|e| e.as_ref().err()).map(String::as_str).collect();
        let got_errors: Vec<&str> = errors.iter().map(|e| e.entry.as_str()).collect();
        prop_assert_eq!(got_errors, want_errors, "{}", list);
        for e in &errors {
            prop_assert!(e.to_string().contains(&e.entry));
        }
        prop_assert_eq!(PortSet::parse_strict(&list).is_ok(), errors.is_empty());

        let goods: Vec<&Good> = entries.iter().filter_map(|e| e.as_ref().ok()).collect();
        prop_assert_eq!(set.is_empty(), goods.is_empty());
        let mut ports: Vec<u16> = probes;
        for g in &goods {
            match **g {
                Good::Port(p) => ports.push(p),
                Good::Range(a, b) => ports.extend([a, b, a.saturating_sub(1), b.saturating_add(1)]),
                Good::Name(ref name) => {
                    prop_assert!(set.contains(0, Some(name)), "{} in {}", name, list);
                }
            }
        }
        for port in ports {
            let want = goods.iter().any(|g| g.covers(port));
            prop_assert_eq!(set.contains(port, None), want, "port {} in {}", port, list);
            // No valid entry makes an upper-case port name match.
            prop_assert_eq!(set.contains(port, Some("NOT-A-NAME")), want);
        }
    }

    #[test]
    fn any_text_gives_a_set_and_the_trimmed_entries_it_could_not_read(
        list in crate::text_of(TOKENS, 24),
    ) {
        let (_, errors) = PortSet::parse(&list);
        let entries: Vec<&str> = list.split(',').map(str::trim).filter(|e| !e.is_empty()).collect();
        prop_assert!(errors.len() <= entries.len());
        for e in &errors {
            prop_assert!(entries.contains(&e.entry.as_str()), "{:?} in {:?}", e.entry, list);
        }
    }
}
