//! Machine types: parsing `-machine help`, families and versions, and the
//! common machine type of two binaries.

use std::fmt;

use super::*;

/// One line of `qemu-system-x86_64 -machine help`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineInfo {
    /// Machine type name, e.g. `pc-q35-7.2` or the alias `q35`.
    pub name: String,
    /// Description with the parenthesised markers removed.
    pub description: String,
    /// For an alias such as `pc`: the versioned type it stands for.
    pub alias_of: Option<String>,
    /// Marked `(default)`.
    pub is_default: bool,
    /// Marked `(deprecated)`.
    pub deprecated: bool,
}

/// Parse the output of `-machine help`.
///
/// QEMU 7.2 prints a `Supported machines are:` header, then one machine per
/// line: the name left-aligned in a 20-column field, then the description,
/// then optional `(alias of X)`, `(default)` and `(deprecated)` markers, e.g.
///
/// ```text
/// pc                   Standard PC (i440FX + PIIX, 1996) (alias of pc-i440fx-7.2)
/// pc-i440fx-7.2        Standard PC (i440FX + PIIX, 1996) (default)
/// pc-i440fx-1.7        Standard PC (i440FX + PIIX, 1996) (deprecated)
/// ```
pub fn parse_machine_help(output: &str) -> Vec<MachineInfo> {
    let mut out = Vec::new();
    for line in output.lines() {
        let line = line.trim_end();
        if line.is_empty() || line.starts_with(char::is_whitespace) || line.ends_with(':') {
            continue;
        }
        let (name, rest) = match line.split_once(char::is_whitespace) {
            Some((n, r)) => (n, r.trim()),
            None => (line, ""),
        };
        let mut desc = rest.to_string();
        let mut alias_of = None;
        let mut is_default = false;
        let mut deprecated = false;
        loop {
            let d = desc.trim_end();
            if let Some(stripped) = d.strip_suffix("(default)") {
                is_default = true;
                desc = stripped.trim_end().to_string();
            } else if let Some(stripped) = d.strip_suffix("(deprecated)") {
                deprecated = true;
                desc = stripped.trim_end().to_string();
            } else if d.ends_with(')') && d.contains("(alias of ") {
                let idx = d.rfind("(alias of ").unwrap();
                let target = d[idx + "(alias of ".len()..d.len() - 1].trim();
                alias_of = Some(target.to_string());
                desc = d[..idx].trim_end().to_string();
            } else {
                break;
            }
        }
        out.push(MachineInfo {
            name: name.to_string(),
            description: desc,
            alias_of,
            is_default,
            deprecated,
        });
    }
    out
}

/// A family of versioned x86 machine types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MachineFamily {
    /// `pc-i440fx-X.Y`, alias `pc`.
    I440fx,
    /// `pc-q35-X.Y`, alias `q35`.
    Q35,
}

impl MachineFamily {
    /// Prefix of the versioned names, e.g. `pc-q35-`.
    pub fn prefix(self) -> &'static str {
        match self {
            MachineFamily::I440fx => "pc-i440fx-",
            MachineFamily::Q35 => "pc-q35-",
        }
    }

    /// The unversioned alias, `pc` or `q35`.
    pub fn alias(self) -> &'static str {
        match self {
            MachineFamily::I440fx => "pc",
            MachineFamily::Q35 => "q35",
        }
    }

    /// Family of a machine name: `pc`/`i440fx`/`pc-i440fx-*` or `q35`/`pc-q35-*`.
    pub fn from_name(name: &str) -> Result<Self, QemuError> {
        match name {
            "pc" | "i440fx" => Ok(MachineFamily::I440fx),
            "q35" => Ok(MachineFamily::Q35),
            n if n.starts_with("pc-i440fx-") => Ok(MachineFamily::I440fx),
            n if n.starts_with("pc-q35-") => Ok(MachineFamily::Q35),
            n => Err(QemuError::UnknownFamily(n.to_string())),
        }
    }

    /// The version part of `name` if it is a versioned type of this family.
    pub fn version_of(self, name: &str) -> Option<MachineVersion> {
        name.strip_prefix(self.prefix())
            .and_then(MachineVersion::parse)
    }
}

impl fmt::Display for MachineFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.alias())
    }
}

/// Numeric machine version such as `7.2` or `4.0.1`, ordered numerically.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MachineVersion(pub Vec<u32>);

impl MachineVersion {
    /// Parse `X.Y[.Z...]`; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        let parts: Option<Vec<u32>> = s.split('.').map(|p| p.parse().ok()).collect();
        parts.filter(|p| p.len() >= 2).map(MachineVersion)
    }
}

/// Newest versioned machine type of `family` in `machines` (numeric order, so
/// `2.12` > `2.9` and `4.0.1` > `4.0`).
pub fn newest_versioned(machines: &[MachineInfo], family: MachineFamily) -> Option<String> {
    machines
        .iter()
        .filter_map(|m| family.version_of(&m.name).map(|v| (v, &m.name)))
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, n)| n.clone())
}

/// What the family's alias (`pc`/`q35`) stands for in `machines`, falling
/// back to the newest versioned type when there is no alias line.
pub fn resolve_alias(machines: &[MachineInfo], family: MachineFamily) -> Option<String> {
    machines
        .iter()
        .find(|m| m.name == family.alias())
        .and_then(|m| m.alias_of.clone())
        .filter(|t| family.version_of(t).is_some())
        .or_else(|| newest_versioned(machines, family))
}

fn has_machine(machines: &[MachineInfo], name: &str) -> bool {
    machines.iter().any(|m| m.name == name)
}

/// Pick a machine type both binaries support, like QEMU's
/// `find_common_machine_version()`: resolve the family alias in each binary;
/// if they agree use it, else use the source's if the destination has it,
/// else the destination's if the source has it. Unlike QEMU (which gives up
/// there) we then fall back to the newest versioned type of the family that
/// both list.
pub fn find_common_machine(
    src: &[MachineInfo],
    dst: &[MachineInfo],
    family: MachineFamily,
) -> Result<String, QemuError> {
    let t1 = resolve_alias(src, family);
    let t2 = resolve_alias(dst, family);
    if let (Some(a), Some(b)) = (&t1, &t2) {
        if a == b {
            return Ok(a.clone());
        }
        if has_machine(dst, a) {
            return Ok(a.clone());
        }
        if has_machine(src, b) {
            return Ok(b.clone());
        }
    }
    src.iter()
        .filter_map(|m| family.version_of(&m.name).map(|v| (v, &m.name)))
        .filter(|(_, n)| has_machine(dst, n))
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, n)| n.clone())
        .ok_or_else(|| QemuError::NoCommonMachine {
            family: family.alias().to_string(),
            src: t1.unwrap_or_else(|| "none".into()),
            dst: t2.unwrap_or_else(|| "none".into()),
        })
}

/// The machine type to launch: `override_` (normally
/// `QTEST_QEMU_MACHINE_TYPE`) when set and non-empty — checked against both
/// binaries' lists when those are non-empty — otherwise
/// [`find_common_machine`].
pub fn resolve_machine(
    override_: Option<&str>,
    src: &[MachineInfo],
    dst: &[MachineInfo],
    family: MachineFamily,
) -> Result<String, QemuError> {
    if let Some(m) = override_.filter(|m| !m.is_empty()) {
        for (side, list) in [(Side::Source, src), (Side::Destination, dst)] {
            if !list.is_empty() && !has_machine(list, m) {
                return Err(QemuError::MachineUnsupported {
                    machine: m.to_string(),
                    side,
                });
            }
        }
        return Ok(m.to_string());
    }
    find_common_machine(src, dst, family)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELP_7_2: &str = include_str!("../../../../fixtures/qemu-7.2/machine-help.txt");

    #[test]
    fn parse_machine_help_7_2() {
        let ms = parse_machine_help(HELP_7_2);
        assert_eq!(ms.len(), 61, "one header line, 61 machines");
        let pc = ms.iter().find(|m| m.name == "pc").unwrap();
        assert_eq!(pc.alias_of.as_deref(), Some("pc-i440fx-7.2"));
        assert_eq!(pc.description, "Standard PC (i440FX + PIIX, 1996)");
        assert!(!pc.is_default);
        let def = ms.iter().find(|m| m.is_default).unwrap();
        assert_eq!(def.name, "pc-i440fx-7.2");
        assert_eq!(def.alias_of, None);
        let dep = ms.iter().find(|m| m.name == "pc-i440fx-1.4").unwrap();
        assert!(dep.deprecated);
        let q35 = ms.iter().find(|m| m.name == "q35").unwrap();
        assert_eq!(q35.alias_of.as_deref(), Some("pc-q35-7.2"));
        assert!(ms.iter().any(|m| m.name == "pc-q35-4.0.1"));
        assert!(ms
            .iter()
            .any(|m| m.name == "none" && m.description == "empty machine"));
        assert_eq!(
            newest_versioned(&ms, MachineFamily::I440fx).as_deref(),
            Some("pc-i440fx-7.2")
        );
        assert_eq!(
            newest_versioned(&ms, MachineFamily::Q35).as_deref(),
            Some("pc-q35-7.2")
        );
        assert_eq!(
            resolve_alias(&ms, MachineFamily::Q35).as_deref(),
            Some("pc-q35-7.2")
        );
    }

    fn machines(names: &[&str]) -> Vec<MachineInfo> {
        names
            .iter()
            .map(|n| MachineInfo {
                name: n.to_string(),
                description: String::new(),
                alias_of: None,
                is_default: false,
                deprecated: false,
            })
            .collect()
    }

    #[test]
    fn machine_versions_order_numerically() {
        let ms = machines(&[
            "pc-i440fx-2.9",
            "pc-i440fx-2.12",
            "pc-i440fx-2.10",
            "pc-q35-4.0",
            "pc-q35-4.0.1",
            "pc-q35-x",
        ]);
        assert_eq!(
            newest_versioned(&ms, MachineFamily::I440fx).as_deref(),
            Some("pc-i440fx-2.12")
        );
        assert_eq!(
            newest_versioned(&ms, MachineFamily::Q35).as_deref(),
            Some("pc-q35-4.0.1")
        );
        assert_eq!(MachineVersion::parse("7"), None);
        assert_eq!(MachineVersion::parse("7.x"), None);
        assert!(MachineVersion::parse("10.0").unwrap() > MachineVersion::parse("9.2").unwrap());
    }

    #[test]
    fn common_machine() {
        let mut src = machines(&["pc-i440fx-8.0", "pc-i440fx-7.2", "pc-q35-8.0", "pc-q35-7.2"]);
        src.push(MachineInfo {
            name: "pc".into(),
            description: String::new(),
            alias_of: Some("pc-i440fx-8.0".into()),
            is_default: false,
            deprecated: false,
        });
        let dst = parse_machine_help(HELP_7_2);
        // same binary
        assert_eq!(
            find_common_machine(&dst, &dst, MachineFamily::I440fx).unwrap(),
            "pc-i440fx-7.2"
        );
        // newer src, older dst: src alias 8.0 missing in dst, dst's 7.2 present in src
        assert_eq!(
            find_common_machine(&src, &dst, MachineFamily::I440fx).unwrap(),
            "pc-i440fx-7.2"
        );
        assert_eq!(
            find_common_machine(&dst, &src, MachineFamily::I440fx).unwrap(),
            "pc-i440fx-7.2"
        );
        // no alias line for q35 in src: newest versioned is used
        assert_eq!(
            find_common_machine(&src, &dst, MachineFamily::Q35).unwrap(),
            "pc-q35-7.2"
        );
        // fallback beyond QEMU's rule: newest common when neither alias target is shared
        let a = machines(&["pc-q35-9.0", "pc-q35-7.1", "pc-q35-7.0"]);
        let b = machines(&["pc-q35-8.0", "pc-q35-7.1", "pc-q35-7.0"]);
        assert_eq!(
            find_common_machine(&a, &b, MachineFamily::Q35).unwrap(),
            "pc-q35-7.1"
        );
        // nothing common
        let c = machines(&["pc-q35-6.0"]);
        let err = find_common_machine(&a, &c, MachineFamily::Q35).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no common machine version for machine type 'q35' between the source binary (pc-q35-9.0) and the destination binary (pc-q35-6.0)"
        );
    }

    #[test]
    fn machine_override() {
        let ms = parse_machine_help(HELP_7_2);
        assert_eq!(
            resolve_machine(Some("pc-q35-6.2"), &ms, &ms, MachineFamily::I440fx).unwrap(),
            "pc-q35-6.2"
        );
        assert_eq!(
            resolve_machine(Some(""), &ms, &ms, MachineFamily::Q35).unwrap(),
            "pc-q35-7.2"
        );
        assert_eq!(
            resolve_machine(None, &ms, &ms, MachineFamily::I440fx).unwrap(),
            "pc-i440fx-7.2"
        );
        let err = resolve_machine(Some("pc-q35-99.0"), &ms, &ms, MachineFamily::Q35).unwrap_err();
        assert!(matches!(
            err,
            QemuError::MachineUnsupported {
                side: Side::Source,
                ..
            }
        ));
        // unchecked when the lists are unknown
        assert_eq!(
            resolve_machine(Some("virt"), &[], &[], MachineFamily::Q35).unwrap(),
            "virt"
        );
        assert_eq!(
            MachineFamily::from_name("pc").unwrap(),
            MachineFamily::I440fx
        );
        assert_eq!(
            MachineFamily::from_name("pc-q35-7.2").unwrap(),
            MachineFamily::Q35
        );
        assert!(MachineFamily::from_name("virt").is_err());
    }
}
