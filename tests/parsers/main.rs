//! Property tests of every parser that reads outside input: the gRPC request body, the
//! authority and context token a proxy sends, port-list annotations, manifest files, the
//! objects they hold as the index reads them, credentials Secrets and Link objects. Each
//! property holds for any input: no panic, a clear error for what is bad, and the parts put
//! in come back out where a round trip exists.
//!
//! CI runs a few hundred cases per property (seconds in all); for a long run by hand set
//! `PROPTEST_CASES`, e.g. `PROPTEST_CASES=100000 cargo test --release --test parsers`.
//! Heap bounds on hostile inputs are in `tests/parser_memory.rs`.

mod authority;
mod context;
mod grpc;
mod link;
mod manifests;
mod objects;
mod ports;
mod secrets;
mod yaml;

use proptest::{prelude::*, test_runner::Config};

/// `cases` per property, unless `PROPTEST_CASES` asks for more (or fewer).
pub fn config(cases: u32) -> Config {
    if std::env::var_os("PROPTEST_CASES").is_some() {
        Config::default()
    } else {
        Config::with_cases(cases)
    }
}

/// Text made of `tokens` that matter to a parser, mixed with arbitrary Unicode, so that
/// cases get past the first check more often than random text would.
pub fn text_of(tokens: &'static [&'static str], max_parts: usize) -> BoxedStrategy<String> {
    let part = prop_oneof![
        4 => proptest::sample::select(tokens).prop_map(str::to_string),
        1 => any::<String>(),
        1 => proptest::collection::vec(any::<u8>(), 0..8)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ];
    proptest::collection::vec(part, 0..max_parts)
        .prop_map(|parts| parts.concat())
        .boxed()
}
