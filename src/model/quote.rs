//! Quoting client input in error messages without echoing all of it back.

/// The longest prefix of client input an error message quotes, in characters.
pub const QUOTE_LIMIT: usize = 80;

/// `input` cut to [`QUOTE_LIMIT`] characters, with `…` where it was cut, so an error
/// message stays short whatever a client sent.
pub fn quote_prefix(input: &str) -> String {
    match input.char_indices().nth(QUOTE_LIMIT) {
        None => input.to_string(),
        Some((end, _)) => format!("{}…", &input[..end]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_input_is_kept_and_long_input_is_cut_on_a_char_boundary() {
        assert_eq!(quote_prefix("web.shop"), "web.shop");
        let long = "é".repeat(1000);
        let quoted = quote_prefix(&long);
        assert_eq!(quoted.chars().count(), QUOTE_LIMIT + 1);
        assert!(quoted.ends_with('…'));
    }
}
