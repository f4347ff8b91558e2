//! Message framing.
//!
//! Server output is one JSON object per CRLF-terminated line, so the client
//! reads lines ([`read_line_bounded`]). Client input to a QEMU server is a
//! JSON *stream*: objects may span lines or share one, and single-quoted
//! strings are accepted. [`JsonSplitter`] cuts such a byte stream into
//! complete top-level values the way QEMU's json-streamer does, with a bound
//! on the size of one value.

use std::io::{self, BufRead};

/// The largest QMP message either side accepts (QEMU's streamer limit is 64 MiB;
/// nothing in migration testing comes close to 1 MiB).
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// Reads one line (LF-terminated, a trailing CR removed) of at most `max` bytes.
///
/// Returns `Ok(None)` at end of stream. An overlong line is consumed up to
/// its newline and reported as `InvalidData`, so the stream stays in sync.
pub fn read_line_bounded<R: BufRead>(reader: &mut R, max: usize) -> io::Result<Option<String>> {
    let mut line = Vec::new();
    let mut overlong = false;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            if line.is_empty() && !overlong {
                return Ok(None);
            }
            break;
        }
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        if !overlong {
            if line.len() + chunk.len() > max {
                overlong = true;
                line.clear();
            } else {
                line.extend_from_slice(chunk);
            }
        }
        let consumed = done.unwrap_or(buf.len());
        reader.consume(consumed);
        if done.is_some() {
            break;
        }
    }
    if overlong {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("line longer than {max} bytes"),
        ));
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// One unit produced by [`JsonSplitter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A complete top-level JSON text, single quotes already converted.
    Value(String),
    /// Input that can never become valid JSON; carries QEMU's error text.
    Error(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quote {
    None,
    Double,
    Single,
}

/// Incremental splitter of a QMP input byte stream into top-level JSON values.
#[derive(Debug)]
pub struct JsonSplitter {
    buf: Vec<u8>,
    depth: usize,
    quote: Quote,
    escape: bool,
    max: usize,
    overflowed: bool,
    /// After a stray byte, skip input like QEMU's lexer (`IN_RECOVERY`).
    recovering: bool,
    /// Where the open string started in `buf`, and its quote byte.
    str_start: usize,
    str_quote: u8,
}

/// QEMU's limit on the nesting of one JSON value (`MAX_NESTING`).
pub const MAX_NESTING: usize = 1024;

/// QEMU's text for a stray byte: the bad token, with bytes that are not
/// UTF-8 shown as U+FFFD (as QEMU's JSON output renders them).
fn stray(token: &[u8]) -> String {
    format!(
        "JSON parse error, stray '{}'",
        String::from_utf8_lossy(token)
    )
}

impl Default for JsonSplitter {
    fn default() -> Self {
        JsonSplitter::new(MAX_MESSAGE_BYTES)
    }
}

impl JsonSplitter {
    /// A splitter rejecting values longer than `max` bytes.
    pub fn new(max: usize) -> JsonSplitter {
        JsonSplitter {
            buf: Vec::new(),
            depth: 0,
            quote: Quote::None,
            escape: false,
            max,
            overflowed: false,
            recovering: false,
            str_start: 0,
            str_quote: b'"',
        }
    }

    fn reset(&mut self) {
        self.buf.clear();
        self.depth = 0;
        self.quote = Quote::None;
        self.escape = false;
    }

    fn take(&mut self, out: &mut Vec<Frame>) {
        let bytes = std::mem::take(&mut self.buf);
        self.reset();
        if self.overflowed {
            self.overflowed = false;
            out.push(Frame::Error(format!(
                "JSON parse error, message exceeds {} bytes",
                self.max
            )));
            return;
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        match String::from_utf8(bytes) {
            Ok(s) => out.push(Frame::Value(s)),
            Err(_) => out.push(Frame::Error(
                "JSON parse error, invalid UTF-8 sequence in string".into(),
            )),
        }
    }

    fn push_byte(&mut self, b: u8) {
        if self.buf.len() >= self.max {
            self.overflowed = true;
        } else {
            self.buf.push(b);
        }
    }

    /// Feeds bytes; returns the frames completed by them.
    pub fn feed(&mut self, input: &[u8]) -> Vec<Frame> {
        let mut out = Vec::new();
        for &b in input {
            // QEMU's lexer: after a stray byte, skip everything up to a
            // structural character, a control character other than tab, or
            // 0xFE/0xFF; that byte is then lexed normally.
            if self.recovering {
                let resync = (b < 0x20 && b != b'\t') || b >= 0xfe || b"[]{}".contains(&b);
                if !resync {
                    continue;
                }
                self.recovering = false;
            }
            // Stray bytes: a control character (other than whitespace) or a
            // non-ASCII byte outside a string; a control character or
            // 0xFE/0xFF inside one. Each is one error; the partial value is
            // dropped and the lexer recovers.
            let bad = match self.quote {
                Quote::None => (b < 0x20 && !b" \t\r\n".contains(&b)) || b >= 0x80,
                _ => !(0x20..0xfe).contains(&b),
            };
            if bad {
                let token = if self.quote == Quote::None {
                    vec![b]
                } else {
                    let mut t = vec![self.str_quote];
                    t.extend_from_slice(self.buf.get(self.str_start + 1..).unwrap_or_default());
                    t.push(b);
                    t
                };
                self.reset();
                self.overflowed = false;
                self.recovering = true;
                out.push(Frame::Error(stray(&token)));
                continue;
            }
            match self.quote {
                Quote::Double | Quote::Single => {
                    let closing = if self.quote == Quote::Double {
                        b'"'
                    } else {
                        b'\''
                    };
                    if self.escape {
                        self.escape = false;
                        if self.quote == Quote::Single && b == b'\'' {
                            // \' inside a single-quoted string is a plain quote.
                            self.buf.pop();
                            self.push_byte(b'\'');
                            continue;
                        }
                        self.push_byte(b);
                    } else if b == b'\\' {
                        self.escape = true;
                        self.push_byte(b);
                    } else if b == closing {
                        self.quote = Quote::None;
                        self.push_byte(b'"');
                    } else if b == b'"' {
                        // A double quote inside a single-quoted string.
                        self.push_byte(b'\\');
                        self.push_byte(b'"');
                    } else {
                        self.push_byte(b);
                    }
                    continue;
                }
                Quote::None => {}
            }
            match b {
                b'"' => {
                    self.quote = Quote::Double;
                    self.str_start = self.buf.len();
                    self.str_quote = b;
                    self.push_byte(b);
                }
                b'\'' => {
                    self.quote = Quote::Single;
                    self.str_start = self.buf.len();
                    self.str_quote = b;
                    self.push_byte(b'"');
                }
                b'{' | b'[' => {
                    if self.depth + 1 > MAX_NESTING {
                        // QEMU's streamer drops the value and starts afresh
                        // with the next byte (no lexer recovery).
                        self.reset();
                        self.overflowed = false;
                        out.push(Frame::Error("JSON nesting depth limit exceeded".into()));
                        continue;
                    }
                    self.depth += 1;
                    self.push_byte(b);
                }
                b'}' | b']' => {
                    self.push_byte(b);
                    if self.depth == 0 {
                        self.take(&mut out);
                    } else {
                        self.depth -= 1;
                        if self.depth == 0 {
                            self.take(&mut out);
                        }
                    }
                }
                b'\n' if self.depth == 0 => self.take(&mut out),
                _ => self.push_byte(b),
            }
        }
        out
    }

    /// Whether a partial value is buffered.
    pub fn has_partial(&self) -> bool {
        !self.buf.iter().all(u8::is_ascii_whitespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn values(frames: Vec<Frame>) -> Vec<String> {
        frames
            .into_iter()
            .map(|f| match f {
                Frame::Value(v) => v,
                Frame::Error(e) => format!("ERR {e}"),
            })
            .collect()
    }

    #[test]
    fn splits_objects_across_and_within_lines() {
        let mut s = JsonSplitter::default();
        let mut got = values(s.feed(b"{\"execute\":\n \"stop\"}{\"execute\":\"cont\"}"));
        got.extend(values(s.feed(b"\r\n")));
        assert_eq!(
            got,
            vec!["{\"execute\":\n \"stop\"}", "{\"execute\":\"cont\"}"]
        );
    }

    #[test]
    fn converts_single_quotes() {
        let mut s = JsonSplitter::default();
        let got = values(s.feed(b"{'execute': 'x', 'arguments': {'a': 'it\\'s \"q\"'}}"));
        let v: serde_json::Value = serde_json::from_str(&got[0]).unwrap();
        assert_eq!(v["arguments"]["a"], "it's \"q\"");
    }

    #[test]
    fn braces_inside_strings_do_not_count() {
        let mut s = JsonSplitter::default();
        let got = values(s.feed(b"{\"a\": \"}{\"}\n"));
        assert_eq!(got, vec!["{\"a\": \"}{\"}"]);
    }

    #[test]
    fn scalars_end_at_newline() {
        let mut s = JsonSplitter::default();
        assert_eq!(values(s.feed(b"42\nfoo\n")), vec!["42", "foo"]);
    }

    #[test]
    fn oversize_value_is_an_error_then_recovers() {
        let mut s = JsonSplitter::new(16);
        let got = values(s.feed(b"{\"a\": \"0123456789abcdef\"}{\"b\":1}"));
        assert_eq!(got.len(), 2);
        assert!(got[0].starts_with("ERR"), "{got:?}");
        assert_eq!(got[1], "{\"b\":1}");
    }

    #[test]
    fn control_byte_resets() {
        let mut s = JsonSplitter::default();
        let got = values(s.feed(b"{\"exec\xff{\"execute\":\"stop\"}"));
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], "ERR JSON parse error, stray '\"exec\u{fffd}'");
        assert_eq!(got[1], "{\"execute\":\"stop\"}");
    }

    #[test]
    fn stray_bytes_like_qemu() {
        // fixtures/qemu-7.2/bad-input-garbage-bytes.json
        let mut s = JsonSplitter::default();
        let got = values(s.feed(b"\x01\x02garbage\xff\xfe\n"));
        assert_eq!(
            got,
            vec![
                "ERR JSON parse error, stray '\u{1}'",
                "ERR JSON parse error, stray '\u{2}'",
                "ERR JSON parse error, stray '\u{fffd}'",
                "ERR JSON parse error, stray '\u{fffd}'",
            ]
        );
        // bad-input-unterminated-string.json; recovery ends at the '{'
        let got = values(s.feed(b"{\"execute\n junk {\"a\": 1}\n"));
        assert_eq!(
            got,
            vec!["ERR JSON parse error, stray '\"execute\n'", "{\"a\": 1}"]
        );
    }

    #[test]
    fn nesting_limit_like_qemu() {
        let mut s = JsonSplitter::default();
        let input = format!("{}{}\n", "[".repeat(1100), "]".repeat(1100));
        let got = values(s.feed(input.as_bytes()));
        assert_eq!(got[0], "ERR JSON nesting depth limit exceeded");
        assert_eq!(got[1], format!("{}{}", "[".repeat(75), "]".repeat(75)));
        assert_eq!(got.len(), 2 + 1025);
        assert!(got[2..].iter().all(|g| g == "]"));
    }

    #[test]
    fn read_line_strips_crlf_and_bounds() {
        let mut c = Cursor::new(b"abc\r\n0123456789\nxy".to_vec());
        assert_eq!(
            read_line_bounded(&mut c, 5).unwrap().as_deref(),
            Some("abc")
        );
        assert!(read_line_bounded(&mut c, 5).is_err());
        assert_eq!(read_line_bounded(&mut c, 5).unwrap().as_deref(), Some("xy"));
        assert_eq!(read_line_bounded(&mut c, 5).unwrap(), None);
    }
}
