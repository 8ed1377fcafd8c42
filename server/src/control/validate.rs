//! Checks on human-entered text (titles, display names, labels): trimmed, bounded, no
//! control characters. Returns the cleaned value or a refusal with a stable code.

use super::ControlError;

pub const MAX_TITLE_CHARS: usize = 100;
pub const MAX_DISPLAY_NAME_CHARS: usize = 40;
pub const MAX_LABEL_CHARS: usize = 100;

/// Invisible formatting characters (zero-width, bidirectional overrides, soft hyphen) that
/// would let "Ada" and "Ada\u{200b}" pass for each other, or reverse text on screen.
fn is_invisible_format(c: char) -> bool {
    matches!(c,
        '\u{00ad}' | '\u{061c}' | '\u{180e}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206f}' | '\u{feff}')
}

fn clean(
    value: &str,
    max_chars: usize,
    code: &'static str,
    what: &str,
) -> Result<String, ControlError> {
    if value
        .chars()
        .any(|c| c.is_control() || is_invisible_format(c))
    {
        return Err(ControlError::invalid(
            code,
            format!("{what} must not contain control characters"),
        ));
    }
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(ControlError::invalid(
            code,
            format!("{what} must not be empty"),
        ));
    }
    let count = trimmed.chars().count();
    if count > max_chars {
        return Err(ControlError::invalid(
            code,
            format!("{what} must be at most {max_chars} characters, got {count}"),
        ));
    }
    Ok(trimmed.to_owned())
}

pub fn title(value: &str) -> Result<String, ControlError> {
    clean(value, MAX_TITLE_CHARS, "invalid_title", "title")
}

pub fn display_name(value: &str) -> Result<String, ControlError> {
    clean(
        value,
        MAX_DISPLAY_NAME_CHARS,
        "invalid_display_name",
        "display_name",
    )
}

pub fn label(value: &str) -> Result<String, ControlError> {
    clean(value, MAX_LABEL_CHARS, "invalid_label", "label")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(r: Result<String, ControlError>) -> &'static str {
        match r {
            Err(ControlError::Invalid { code, .. }) => code,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn titles() {
        assert_eq!(title("  Friday jam ").unwrap(), "Friday jam");
        assert_eq!(title(&"é".repeat(100)).unwrap().chars().count(), 100);
        assert_eq!(code(title(&"x".repeat(101))), "invalid_title");
        assert_eq!(code(title("")), "invalid_title");
        assert_eq!(code(title("   ")), "invalid_title");
        assert_eq!(code(title("a\u{7}b")), "invalid_title");
    }

    #[test]
    fn display_names() {
        assert_eq!(display_name("Ada").unwrap(), "Ada");
        assert_eq!(code(display_name(" \t ")), "invalid_display_name");
        assert_eq!(code(display_name("Ada\nLovelace")), "invalid_display_name");
        assert_eq!(code(display_name("\u{202e}x\u{0}")), "invalid_display_name");
        assert_eq!(code(display_name("Ada\u{200b}")), "invalid_display_name");
        assert_eq!(code(display_name("\u{202e}nimda")), "invalid_display_name");
        assert_eq!(display_name("Zoë 🎙").unwrap(), "Zoë 🎙");
        assert_eq!(code(display_name(&"n".repeat(41))), "invalid_display_name");
    }
}
