//! Byte sizes written the QEMU way: `"128M"`, `"3G"`, `"4096"` or a bare integer.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A size in bytes. Suffixes are binary like QEMU's (`K` = 1024, `M`, `G`, `T`), case-insensitive,
/// optionally followed by `B` or `iB`. Serialized as a string (`"128M"` when exact, else the byte count).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Size(pub u64);

impl Size {
    /// `n` mebibytes.
    pub const fn mib(n: u64) -> Size {
        Size(n << 20)
    }

    /// The byte count.
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

/// Why a size string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid size {input:?}: {reason}")]
pub struct SizeError {
    input: String,
    reason: &'static str,
}

impl FromStr for Size {
    type Err = SizeError;

    fn from_str(s: &str) -> Result<Size, SizeError> {
        let err = |reason| SizeError {
            input: s.to_string(),
            reason,
        };
        let t = s.trim();
        let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        if digits_end == 0 {
            return Err(err("expected a number"));
        }
        let n: u64 = t[..digits_end]
            .parse()
            .map_err(|_| err("number too large"))?;
        let suffix = t[digits_end..].trim();
        let lower = suffix.to_ascii_lowercase();
        let (unit, rest) = match lower.chars().next() {
            None => (0, ""),
            Some('b') if lower == "b" => (0, ""),
            Some('k') => (10, &lower[1..]),
            Some('m') => (20, &lower[1..]),
            Some('g') => (30, &lower[1..]),
            Some('t') => (40, &lower[1..]),
            Some(_) => return Err(err("unknown suffix (use K, M, G or T)")),
        };
        if !matches!(rest, "" | "b" | "ib") {
            return Err(err("unknown suffix (use K, M, G or T)"));
        }
        n.checked_mul(1u64 << unit)
            .map(Size)
            .ok_or_else(|| err("size overflows 64 bits"))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n != 0 {
            for (shift, suffix) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
                if n.trailing_zeros() >= shift {
                    return write!(f, "{}{}", n >> shift, suffix);
                }
            }
        }
        write!(f, "{n}")
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size in bytes: a non-negative integer or a string like \"128M\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v)
                    .map(Size)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_qemu_style_sizes() {
        assert_eq!("128M".parse::<Size>().unwrap(), Size(128 << 20));
        assert_eq!("128m".parse::<Size>().unwrap(), Size(128 << 20));
        assert_eq!("4k".parse::<Size>().unwrap(), Size(4096));
        assert_eq!("1GiB".parse::<Size>().unwrap(), Size(1 << 30));
        assert_eq!("2T".parse::<Size>().unwrap(), Size(2 << 40));
        assert_eq!("4096".parse::<Size>().unwrap(), Size(4096));
        assert_eq!("0".parse::<Size>().unwrap(), Size(0));
        assert_eq!("10B".parse::<Size>().unwrap(), Size(10));
        for bad in [
            "",
            "M",
            "-1",
            "12X",
            "1MM",
            "99999999999999999999",
            "16777216T",
        ] {
            assert!(bad.parse::<Size>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn displays_exact_units() {
        assert_eq!(Size(128 << 20).to_string(), "128M");
        assert_eq!(Size(3_000_000).to_string(), "3000000");
        assert_eq!(Size(0).to_string(), "0");
        assert_eq!(Size(1536).to_string(), "1536");
        assert_eq!(Size(2048).to_string(), "2K");
    }

    #[test]
    fn deserializes_from_integer_or_string() {
        let v: Size = serde_json::from_str("134217728").unwrap();
        assert_eq!(v, Size(134217728));
        let v: Size = serde_json::from_str("\"128M\"").unwrap();
        assert_eq!(v, Size(134217728));
        assert!(serde_json::from_str::<Size>("-5").is_err());
    }
}
