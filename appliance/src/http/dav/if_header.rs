//! A guard in front of dav-server's `If:` header parser, which indexes past the end of a token left open
//! (`<urn:…` or `["…` without its closing bracket) and panics: with `panic = "abort"` in release, one such
//! header would stop the whole box. Headers its tokenizer would overrun are refused here with a 400.

/// Whether dav-server's tokenizer can read `value` to its end without overrunning it (it may still find the
/// header invalid: that it reports as an error, not a panic).
pub fn safe(value: &[u8]) -> bool {
    let mut rest = value;
    loop {
        while let [c, tail @ ..] = rest {
            if !is_whitespace(*c) {
                break;
            }
            rest = tail;
        }
        let Some(&first) = rest.first() else {
            return true;
        };
        rest = match first {
            b'(' | b')' => &rest[1..],
            b'N' if rest.starts_with(b"Not") => &rest[3..],
            b'<' => match closed(rest, b'>') {
                Some(after) => after,
                None => return false,
            },
            b'[' => match closed(rest, b']') {
                Some(after) => after,
                None => return false,
            },
            _ => {
                let word =
                    rest.iter().take_while(|&&c| !(is_whitespace(c) || b"<>()[]".contains(&c) || c < 32)).count();
                if word == 0 {
                    // dav-server refuses this itself, without panicking.
                    return true;
                }
                &rest[word..]
            }
        };
    }
}

fn is_whitespace(c: u8) -> bool {
    b" \t\r\n".contains(&c)
}

/// What follows a token opened by `buf[0]` and closed by `close` (quotes hide `close`), as dav-server's
/// `scan_until` reads it; `None` where it would run past the end. Whitespace ends its scan with an error, so
/// the rest does not matter then.
fn closed(buf: &[u8], close: u8) -> Option<&[u8]> {
    let mut quote = false;
    for (i, &c) in buf.iter().enumerate().skip(1) {
        if !quote && c == close {
            return Some(&buf[i + 1..]);
        }
        if is_whitespace(c) {
            return Some(b"");
        }
        if c == b'"' {
            quote = !quote;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_formed_and_merely_invalid_headers_pass() {
        assert!(safe(b"(<urn:uuid:cce3e84d> [\"5c1a\"]) (Not <DAV:no-lock> [\"5c1a\"])"));
        assert!(safe(b"<http://h/dav/me/x> (<urn:uuid:1>)"));
        assert!(safe(b"(<a b>)"), "whitespace inside a token is an error dav-server reports itself");
        assert!(safe(b""));
    }

    #[test]
    fn tokens_left_open_are_refused() {
        assert!(!safe(b"(<urn:uuid:1"));
        assert!(!safe(b"([\"abc\""));
        assert!(!safe(b"([\"abc]\")"), "a bracket inside quotes does not close the tag");
    }
}
