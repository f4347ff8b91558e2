//! Guest images: small TOML files naming the workload a guest runs.
//!
//! The format is documented in `guest-images/README.md`. Parsing is pure
//! (no side effects besides reading the file in [`GuestImage::load`]) so
//! the harness can call it to learn which range to check.
//!
//! ```toml
//! name = "sweep"
//! description = "QEMU's A-B guest"
//!
//! [workload]          # vCPU 0
//! kind = "sweep"
//! start = "1M"
//! end = "100M"
//! pass-delay = 1000   # microseconds
//!
//! [secondary]         # vCPUs 1.., optional
//! kind = "hotset"
//! region = "8M"
//! ```

use std::path::Path;

use thiserror::Error;
use toml::{Table, Value};

use super::memory::PAGE_SIZE;

const PAGE: u64 = PAGE_SIZE as u64;
const MIB: u64 = 1 << 20;
/// Default start of the main workload range (QEMU's A-B test start).
pub const DEFAULT_START: u64 = MIB;
/// Default end of the main workload range (QEMU's A-B test end).
pub const DEFAULT_END: u64 = 100 * MIB;
/// Default size of the region reserved for secondary vCPUs.
pub const DEFAULT_SECONDARY_REGION: u64 = 8 * MIB;
/// Longest accepted delay, in microseconds (10 s).
pub const MAX_DELAY_US: u64 = 10_000_000;
/// Name used in errors for text parsed with [`GuestImage::parse`].
pub const INLINE_SOURCE: &str = "<inline>";

/// Errors from loading, parsing or laying out a guest image. Each names the
/// file (or image) and the offending key.
#[derive(Debug, Error)]
pub enum ImageError {
    /// The file could not be read.
    #[error("cannot read guest image {file}: {source}")]
    Io {
        /// Path of the file.
        file: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The text is not valid TOML.
    #[error("{file}: invalid TOML: {message}")]
    Syntax {
        /// File name.
        file: String,
        /// Parser message.
        message: String,
    },
    /// A key that the format does not define.
    #[error("{file}: unknown key `{key}`")]
    UnknownKey {
        /// File name.
        file: String,
        /// Dotted key path.
        key: String,
    },
    /// A required key is absent.
    #[error("{file}: missing required key `{key}`")]
    MissingKey {
        /// File name.
        file: String,
        /// Dotted key path.
        key: String,
    },
    /// A key has a value of the wrong type or out of bounds.
    #[error("{file}: bad value for `{key}`: {message}")]
    BadValue {
        /// File name.
        file: String,
        /// Dotted key path.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// The image does not fit the guest's RAM size or vCPU count.
    #[error("guest image `{image}` ({file}): {message}")]
    Layout {
        /// Image name.
        image: String,
        /// File name.
        file: String,
        /// What does not fit.
        message: String,
    },
}

/// Parameters of the `sweep` workload (QEMU's A-B guest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SweepParams {
    /// Sleep after each full pass, in microseconds (`pass-delay`).
    pub pass_delay_us: u64,
    /// Fill each page of the range with non-zero bytes before the first
    /// pass instead of only zeroing its first byte (`fill`): a guest whose
    /// pages are dense, like QEMU's `memory-backend-file` of data.
    pub fill: bool,
}

/// Parameters of the `hotset` workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HotsetParams {
    /// Number of hot pages (`pages`), clamped to the pages of the range.
    pub pages: u64,
    /// Sleep after each round over the hot pages, in microseconds (`round-delay`).
    pub round_delay_us: u64,
    /// Print `B` every this many rounds (`report-every`).
    pub report_every: u64,
    /// Rounds per scribble phase (`scribble`, 0 = never): the rest of each hot page
    /// alternates between zero and a pattern in every other byte, phases staggered over
    /// the pages (a page that overflows XBZRLE, then changes little again).
    pub scribble: u64,
}

/// Parameters of the `rate` workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateParams {
    /// Pages dirtied per second (`pages-per-sec`).
    pub pages_per_sec: u64,
}

/// Parameters of the `random` workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RandomParams {
    /// ChaCha seed (`seed`).
    pub seed: u64,
    /// Records written between sleeps; `B` is printed after each burst (`burst`).
    pub burst: u64,
    /// Sleep after each burst, in microseconds (`burst-delay`).
    pub burst_delay_us: u64,
}

/// A workload kind with its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkloadSpec {
    /// Increment the first byte of every page, pass after pass.
    Sweep(SweepParams),
    /// Rewrite a small set of pages continuously.
    Hotset(HotsetParams),
    /// Dirty a fixed number of pages per second.
    Rate(RateParams),
    /// Seeded self-checking records in random slots.
    Random(RandomParams),
    /// No writes.
    Idle,
}

impl WorkloadSpec {
    /// The `kind` string of this workload.
    pub fn kind(&self) -> &'static str {
        match self {
            WorkloadSpec::Sweep(_) => "sweep",
            WorkloadSpec::Hotset(_) => "hotset",
            WorkloadSpec::Rate(_) => "rate",
            WorkloadSpec::Random(_) => "random",
            WorkloadSpec::Idle => "idle",
        }
    }
}

/// The workload of vCPU 0 and its requested range (before clipping to RAM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MainWorkload {
    /// Kind and parameters.
    pub spec: WorkloadSpec,
    /// Requested range start (bytes).
    pub start: u64,
    /// Requested range end (bytes, exclusive).
    pub end: u64,
}

/// The workload of vCPUs 1.. and the size of the region they share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecondaryWorkload {
    /// Kind and parameters.
    pub spec: WorkloadSpec,
    /// Requested region size (bytes, before scaling to RAM).
    pub region: u64,
}

/// A parsed guest image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestImage {
    /// Image name (`name`), part of the migrated device state.
    pub name: String,
    /// One-line description.
    pub description: String,
    /// vCPU 0 workload.
    pub workload: MainWorkload,
    /// Workload of the other vCPUs, if any (otherwise they idle).
    pub secondary: Option<SecondaryWorkload>,
    /// File the image came from, or [`INLINE_SOURCE`]; used in errors.
    pub source: String,
}

/// What one vCPU runs, over which range, after layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VcpuPlan {
    /// Kind and parameters.
    pub spec: WorkloadSpec,
    /// Range start (page-aligned).
    pub start: u64,
    /// Range end (page-aligned, exclusive; `start == end` only for idle).
    pub end: u64,
}

/// Placement of every vCPU's workload in RAM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestLayout {
    /// Plan per vCPU; index 0 is the main workload.
    pub vcpus: Vec<VcpuPlan>,
    /// The secondary region `[start, end)` at the top of RAM, if reserved.
    pub secondary_region: Option<(u64, u64)>,
}

fn align_down(v: u64) -> u64 {
    v / PAGE * PAGE
}

fn align_up(v: u64) -> u64 {
    v.div_ceil(PAGE).saturating_mul(PAGE)
}

impl GuestImage {
    /// Reads and parses an image file; errors name the file.
    pub fn load(path: impl AsRef<Path>) -> Result<GuestImage, ImageError> {
        let path = path.as_ref();
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ImageError::Io {
            file: file.clone(),
            source,
        })?;
        Self::parse_named(&text, &file)
    }

    /// Parses image text; errors name the file as [`INLINE_SOURCE`].
    pub fn parse(text: &str) -> Result<GuestImage, ImageError> {
        Self::parse_named(text, INLINE_SOURCE)
    }

    /// Parses image text; errors name the file as `file`.
    pub fn parse_named(text: &str, file: &str) -> Result<GuestImage, ImageError> {
        Parser { file }.image(text)
    }

    /// Secondary region size for `ram_size`: the requested size, at most a
    /// quarter of RAM, rounded down to whole pages; 0 without `[secondary]`.
    fn secondary_size(&self, ram_size: u64) -> u64 {
        self.secondary
            .as_ref()
            .map_or(0, |s| align_down(s.region.min(ram_size / 4)))
    }

    /// The main range clipped to RAM (see `layout`), or the reason it is empty.
    fn main_range(&self, ram_size: u64) -> Result<(u64, u64), String> {
        let ram = align_down(ram_size);
        let secondary = self.secondary_size(ram);
        let limit = ram - secondary;
        let start = align_up(self.workload.start);
        let end = align_down(self.workload.end).min(limit);
        if start < end {
            Ok((start, end))
        } else {
            let note = if secondary > 0 {
                format!(", the {secondary:#x}-byte secondary region above")
            } else {
                String::new()
            };
            Err(format!(
                "workload range [{:#x}, {:#x}) does not fit in RAM of {ram_size:#x} bytes \
                 (usable below {limit:#x}{note})",
                self.workload.start, self.workload.end
            ))
        }
    }

    /// The range `[start, end)` of vCPU 0's workload for a guest with
    /// `ram_size` bytes of RAM: the requested range, page-aligned inwards and
    /// clipped below the secondary region (reserved whenever the image has
    /// `[secondary]`, independent of `-smp`). This is the range the harness
    /// checks. If the image does not fit, the range is empty (`start == end`)
    /// and [`layout`](Self::layout) says why.
    pub fn test_range(&self, ram_size: u64) -> (u64, u64) {
        self.main_range(ram_size).unwrap_or_else(|_| {
            let s = align_up(self.workload.start).min(align_down(ram_size));
            (s, s)
        })
    }

    /// Places every vCPU's workload: vCPU 0 in [`test_range`](Self::test_range),
    /// vCPUs 1..`vcpus` in equal page-aligned slices of the secondary region
    /// at the top of RAM (or idle without `[secondary]`).
    pub fn layout(&self, ram_size: u64, vcpus: u32) -> Result<GuestLayout, ImageError> {
        let err = |message: String| ImageError::Layout {
            image: self.name.clone(),
            file: self.source.clone(),
            message,
        };
        if ram_size == 0 || !ram_size.is_multiple_of(PAGE) {
            return Err(err(format!(
                "RAM size {ram_size} is not a non-zero multiple of {PAGE}"
            )));
        }
        if vcpus == 0 {
            return Err(err("at least one vCPU is needed".into()));
        }
        let (start, end) = self.main_range(ram_size).map_err(err)?;
        let mut plans = vec![VcpuPlan {
            spec: self.workload.spec,
            start,
            end,
        }];
        let secondaries = u64::from(vcpus - 1);
        let mut secondary_region = None;
        match &self.secondary {
            Some(sec) => {
                let size = self.secondary_size(ram_size);
                let base = ram_size - size;
                secondary_region = Some((base, ram_size));
                if let Some(per) = (size / PAGE).checked_div(secondaries) {
                    if per == 0 {
                        return Err(err(format!(
                            "secondary region of {size:#x} bytes has fewer pages than the {secondaries} secondary vCPUs"
                        )));
                    }
                    for i in 0..secondaries {
                        let s = base + i * per * PAGE;
                        plans.push(VcpuPlan {
                            spec: sec.spec,
                            start: s,
                            end: s + per * PAGE,
                        });
                    }
                }
            }
            None => plans.extend((0..secondaries).map(|_| VcpuPlan {
                spec: WorkloadSpec::Idle,
                start: 0,
                end: 0,
            })),
        }
        Ok(GuestLayout {
            vcpus: plans,
            secondary_region,
        })
    }
}

/// Parses a size: a non-negative integer (bytes) or a string of decimal
/// digits with an optional binary suffix `K`, `M`, `G` or `T`
/// (case-insensitive, e.g. `"100M"`).
pub fn parse_size(value: &Value) -> Result<u64, String> {
    match value {
        Value::Integer(i) => {
            u64::try_from(*i).map_err(|_| format!("size must not be negative, got {i}"))
        }
        Value::String(s) => {
            let t = s.trim();
            let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
            let (digits, suffix) = t.split_at(digits_end);
            if digits.is_empty() {
                return Err(format!(
                    "`{s}` is not a size (expected e.g. 4096, \"64K\", \"100M\")"
                ));
            }
            let shift = match suffix.to_ascii_uppercase().as_str() {
                "" => 0,
                "K" => 10,
                "M" => 20,
                "G" => 30,
                "T" => 40,
                _ => {
                    return Err(format!(
                        "`{s}` has unknown suffix `{suffix}` (expected K, M, G or T)"
                    ))
                }
            };
            digits
                .parse::<u64>()
                .ok()
                .and_then(|n| n.checked_mul(1u64 << shift))
                .ok_or_else(|| format!("`{s}` is too large"))
        }
        other => Err(format!(
            "expected a size (integer or string like \"100M\"), got {}",
            other.type_str()
        )),
    }
}

struct Parser<'a> {
    file: &'a str,
}

impl Parser<'_> {
    fn bad(&self, key: &str, message: impl Into<String>) -> ImageError {
        ImageError::BadValue {
            file: self.file.to_string(),
            key: key.to_string(),
            message: message.into(),
        }
    }

    fn missing(&self, key: &str) -> ImageError {
        ImageError::MissingKey {
            file: self.file.to_string(),
            key: key.to_string(),
        }
    }

    fn check_keys(&self, table: &Table, prefix: &str, allowed: &[&str]) -> Result<(), ImageError> {
        let mut keys: Vec<&String> = table.keys().collect();
        keys.sort();
        match keys.into_iter().find(|k| !allowed.contains(&k.as_str())) {
            Some(k) => Err(ImageError::UnknownKey {
                file: self.file.to_string(),
                key: format!("{prefix}{k}"),
            }),
            None => Ok(()),
        }
    }

    fn string(&self, table: &Table, prefix: &str, key: &str) -> Result<Option<String>, ImageError> {
        let path = format!("{prefix}{key}");
        match table.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.bad(
                &path,
                format!("expected a string, got {}", other.type_str()),
            )),
        }
    }

    fn size(
        &self,
        table: &Table,
        prefix: &str,
        key: &str,
        default: u64,
    ) -> Result<u64, ImageError> {
        match table.get(key) {
            None => Ok(default),
            Some(v) => parse_size(v).map_err(|m| self.bad(&format!("{prefix}{key}"), m)),
        }
    }

    /// An integer in `[min, max]`, or `default` if absent.
    fn int(
        &self,
        table: &Table,
        prefix: &str,
        key: &str,
        default: u64,
        (min, max): (u64, u64),
    ) -> Result<u64, ImageError> {
        let path = format!("{prefix}{key}");
        match table.get(key) {
            None => Ok(default),
            Some(Value::Integer(i)) => match u64::try_from(*i) {
                Ok(v) if (min..=max).contains(&v) => Ok(v),
                _ => Err(self.bad(&path, format!("{i} is outside [{min}, {max}]"))),
            },
            Some(other) => Err(self.bad(
                &path,
                format!("expected an integer, got {}", other.type_str()),
            )),
        }
    }

    /// A boolean, `false` if absent.
    fn flag(&self, table: &Table, prefix: &str, key: &str) -> Result<bool, ImageError> {
        match table.get(key) {
            None => Ok(false),
            Some(Value::Boolean(b)) => Ok(*b),
            Some(other) => Err(self.bad(
                &format!("{prefix}{key}"),
                format!("expected a boolean, got {}", other.type_str()),
            )),
        }
    }

    fn image(&self, text: &str) -> Result<GuestImage, ImageError> {
        let root: Table = text
            .parse()
            .map_err(|e: toml::de::Error| ImageError::Syntax {
                file: self.file.to_string(),
                message: e.message().to_string(),
            })?;
        self.check_keys(&root, "", &["name", "description", "workload", "secondary"])?;
        let name = self
            .string(&root, "", "name")?
            .ok_or_else(|| self.missing("name"))?;
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        {
            return Err(self.bad(
                "name",
                format!("`{name}` must be 1-64 characters of a-z, 0-9, '-', '_'"),
            ));
        }
        let description = self
            .string(&root, "", "description")?
            .ok_or_else(|| self.missing("description"))?;
        if description.contains(['\n', '\r']) || description.len() > 200 {
            return Err(self.bad("description", "must be one line of at most 200 bytes"));
        }
        let workload = match root.get("workload") {
            Some(Value::Table(t)) => self.main(t)?,
            Some(other) => {
                return Err(self.bad(
                    "workload",
                    format!("expected a table, got {}", other.type_str()),
                ))
            }
            None => return Err(self.missing("workload")),
        };
        let secondary = match root.get("secondary") {
            Some(Value::Table(t)) => Some(self.secondary(t)?),
            Some(other) => {
                return Err(self.bad(
                    "secondary",
                    format!("expected a table, got {}", other.type_str()),
                ))
            }
            None => None,
        };
        Ok(GuestImage {
            name,
            description,
            workload,
            secondary,
            source: self.file.to_string(),
        })
    }

    fn main(&self, t: &Table) -> Result<MainWorkload, ImageError> {
        const P: &str = "workload.";
        let spec = self.spec(t, P, &["start", "end"])?;
        let start = self.size(t, P, "start", DEFAULT_START)?;
        let end = self.size(t, P, "end", DEFAULT_END)?;
        if end <= start {
            return Err(self.bad(
                "workload.end",
                format!("end {end:#x} must be above start {start:#x}"),
            ));
        }
        if align_up(start) >= align_down(end) {
            return Err(self.bad(
                "workload.end",
                format!("range [{start:#x}, {end:#x}) holds no whole page"),
            ));
        }
        Ok(MainWorkload { spec, start, end })
    }

    fn secondary(&self, t: &Table) -> Result<SecondaryWorkload, ImageError> {
        const P: &str = "secondary.";
        let spec = self.spec(t, P, &["region"])?;
        let region = self.size(t, P, "region", DEFAULT_SECONDARY_REGION)?;
        if region < PAGE {
            return Err(self.bad(
                "secondary.region",
                format!("{region} bytes is less than one page"),
            ));
        }
        Ok(SecondaryWorkload { spec, region })
    }

    /// Parses `kind` and its parameters; `extra` are the placement keys the
    /// caller reads itself.
    fn spec(&self, t: &Table, p: &str, extra: &[&str]) -> Result<WorkloadSpec, ImageError> {
        let kind = self
            .string(t, p, "kind")?
            .ok_or_else(|| self.missing(&format!("{p}kind")))?;
        let params: &[&str] = match kind.as_str() {
            "sweep" => &["pass-delay", "fill"],
            "hotset" => &["pages", "round-delay", "report-every", "scribble"],
            "rate" => &["pages-per-sec"],
            "random" => &["seed", "burst", "burst-delay"],
            "idle" => &[],
            other => {
                return Err(self.bad(
                    &format!("{p}kind"),
                    format!(
                        "unknown workload `{other}` (expected sweep, hotset, rate, random or idle)"
                    ),
                ))
            }
        };
        let mut allowed = vec!["kind"];
        allowed.extend_from_slice(extra);
        allowed.extend_from_slice(params);
        self.check_keys(t, p, &allowed)?;
        let delay = (0, MAX_DELAY_US);
        Ok(match kind.as_str() {
            "sweep" => WorkloadSpec::Sweep(SweepParams {
                pass_delay_us: self.int(t, p, "pass-delay", 1000, delay)?,
                fill: self.flag(t, p, "fill")?,
            }),
            "hotset" => WorkloadSpec::Hotset(HotsetParams {
                pages: self.int(t, p, "pages", 16, (1, 4096))?,
                round_delay_us: self.int(t, p, "round-delay", 1000, delay)?,
                report_every: self.int(t, p, "report-every", 100, (1, 1_000_000_000))?,
                scribble: self.int(t, p, "scribble", 0, (0, 1_000_000_000))?,
            }),
            "rate" => WorkloadSpec::Rate(RateParams {
                pages_per_sec: self.int(t, p, "pages-per-sec", 4096, (1, 10_000_000))?,
            }),
            "random" => WorkloadSpec::Random(RandomParams {
                seed: self.int(t, p, "seed", 1, (0, i64::MAX as u64))?,
                burst: self.int(t, p, "burst", 1024, (1, 1_000_000))?,
                burst_delay_us: self.int(t, p, "burst-delay", 1000, delay)?,
            }),
            _ => WorkloadSpec::Idle,
        })
    }
}

#[cfg(test)]
mod tests;
