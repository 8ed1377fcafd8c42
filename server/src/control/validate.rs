//! Checks on human-entered text (titles, display names, labels): trimmed, bounded, no
//! control or invisible characters, something visible. Returns the cleaned value or a refusal with a stable code.

use super::ControlError;

pub const MAX_TITLE_CHARS: usize = 100;
pub const MAX_DISPLAY_NAME_CHARS: usize = 40;
pub const MAX_LABEL_CHARS: usize = 100;

/// Characters that draw nothing, or only a gap: zero-width and bidirectional formatting
/// (which would let "Ada" and "Ada\u{200b}" pass for each other, or reverse text on screen),
/// Hangul fillers, the blank Braille pattern, tag characters, line and paragraph separators,
/// the other Unicode format characters and the invisible musical and Khmer signs.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00ad}' | '\u{061c}' | '\u{115f}' | '\u{1160}' | '\u{17b4}' | '\u{17b5}'
        | '\u{180e}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}'
        | '\u{2060}'..='\u{206f}' | '\u{2800}' | '\u{3164}' | '\u{feff}' | '\u{ffa0}'
        | '\u{fff0}'..='\u{fffb}' | '\u{0600}'..='\u{0605}' | '\u{06dd}' | '\u{070f}'
        | '\u{0890}' | '\u{0891}' | '\u{08e2}' | '\u{110bd}' | '\u{110cd}'
        | '\u{13430}'..='\u{1343f}' | '\u{1bca0}'..='\u{1bca3}' | '\u{1d173}'..='\u{1d17a}'
        | '\u{e0000}'..='\u{e007f}')
}

/// Combining marks and variation selectors: they modify the character before them and draw
/// nothing on their own.
fn is_mark(c: char) -> bool {
    matches!(c,
        '\u{0300}'..='\u{036f}' | '\u{0483}'..='\u{0489}' | '\u{1ab0}'..='\u{1aff}'
        | '\u{1dc0}'..='\u{1dff}' | '\u{20d0}'..='\u{20ff}' | '\u{fe00}'..='\u{fe0f}'
        | '\u{fe20}'..='\u{fe2f}' | '\u{e0100}'..='\u{e01ef}')
}

/// Whether a string's characters all draw something: no invisible character anywhere, every
/// mark on a visible base (not at the start, not after a space), and something visible at all.
fn is_visible_text(value: &str) -> bool {
    let mut previous_visible = false;
    let mut any_visible = false;
    for c in value.chars() {
        if is_invisible(c) {
            return false;
        }
        if is_mark(c) {
            if !previous_visible {
                return false;
            }
        } else {
            previous_visible = !c.is_whitespace();
            any_visible |= previous_visible;
        }
    }
    any_visible
}

fn clean(
    value: &str,
    max_chars: usize,
    code: &'static str,
    what: &str,
) -> Result<String, ControlError> {
    if value.chars().any(|c| c.is_control()) {
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
    if !is_visible_text(trimmed) {
        return Err(ControlError::invalid(
            code,
            format!(
                "{what} must be visible text: no invisible characters (zero-width or blank \
                 ones), and no mark without a letter before it"
            ),
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

    /// Characters that draw nothing (or only a gap) must not make up a name or a title.
    #[test]
    fn blank_looking_names_are_refused() {
        let blank = [
            "\u{115f}",
            "\u{1160}",
            "\u{3164}",
            "\u{ffa0}",
            "\u{2800}",
            "\u{3164}\u{3164}\u{3164}",
            "\u{e0041}\u{e0064}\u{e0061}",
            "\u{e0001}",
            "\u{2028}",
            "\u{2029}",
            "\u{0301}",
            "\u{0301}\u{0302}",
            "\u{fe0f}",
            "\u{e0100}",
            "\u{034f}",
            "\u{17b5}",
            "\u{1d173}",
            "\u{fff9}",
            " \u{0301} ",
        ];
        for name in blank {
            assert_eq!(code(display_name(name)), "invalid_display_name", "{name:?}");
            assert_eq!(code(title(name)), "invalid_title", "{name:?}");
        }
        // Invisible characters next to visible ones are refused too: "Ada" and "Ada" plus a
        // filler must not pass for two people.
        for name in ["Ada\u{3164}", "Ada\u{2800}", "A\u{2028}da", "Ada\u{e0041}"] {
            assert_eq!(code(display_name(name)), "invalid_display_name", "{name:?}");
        }
        // Marks on a visible base, and emoji with their variation selector, are fine.
        for name in [
            "Zoe\u{0308}",
            "Ana\u{0301}",
            "\u{2764}\u{fe0f}",
            "Nguyễn",
            "이서연",
        ] {
            assert!(display_name(name).is_ok(), "{name:?}");
        }
    }
}
