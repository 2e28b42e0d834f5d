//! The security interfaces of RFC 8922 §5, declared by each protocol.
//!
//! `polytun capabilities` renders these declarations, so the table shown to
//! users is built from the code and cannot drift from what is implemented.

use std::fmt::Write;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Interface {
    Ipk,
    Alg,
    Ext,
    Cm,
    Ad,
    Pski,
    Iv,
    Sav,
    Ct,
    Ku,
    Sske,
    Ke,
    Me,
}

impl Interface {
    pub const ALL: [Interface; 13] = [
        Interface::Ipk,
        Interface::Alg,
        Interface::Ext,
        Interface::Cm,
        Interface::Ad,
        Interface::Pski,
        Interface::Iv,
        Interface::Sav,
        Interface::Ct,
        Interface::Ku,
        Interface::Sske,
        Interface::Ke,
        Interface::Me,
    ];

    pub fn abbrev(self) -> &'static str {
        match self {
            Interface::Ipk => "IPK",
            Interface::Alg => "ALG",
            Interface::Ext => "EXT",
            Interface::Cm => "CM",
            Interface::Ad => "AD",
            Interface::Pski => "PSKI",
            Interface::Iv => "IV",
            Interface::Sav => "SAV",
            Interface::Ct => "CT",
            Interface::Ku => "KU",
            Interface::Sske => "SSKE",
            Interface::Ke => "KE",
            Interface::Me => "ME",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Interface::Ipk => "identities, certificates, private keys",
            Interface::Alg => "algorithm / proposal selection",
            Interface::Ext => "extension negotiation",
            Interface::Cm => "session cache / resumption",
            Interface::Ad => "delegated authentication",
            Interface::Pski => "pre-shared key import",
            Interface::Iv => "peer identity validation",
            Interface::Sav => "source address validation / cookies",
            Interface::Ct => "connection termination",
            Interface::Ku => "key update on demand",
            Interface::Sske => "shared-secret key export",
            Interface::Ke => "key expiration events",
            Interface::Me => "mobility events",
        }
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// A set of [`Interface`]s, each with a note on how it is offered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    bits: u16,
    notes: Vec<(Interface, &'static str)>,
}

impl Capabilities {
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares support for `i`, with a short note of how (shown in the table).
    pub fn with(mut self, i: Interface, note: &'static str) -> Self {
        self.bits |= i.bit();
        self.notes.push((i, note));
        self
    }

    pub fn supports(&self, i: Interface) -> bool {
        self.bits & i.bit() != 0
    }

    pub fn note(&self, i: Interface) -> Option<&'static str> {
        self.notes.iter().find(|(j, _)| *j == i).map(|(_, n)| *n)
    }

    pub fn iter(&self) -> impl Iterator<Item = Interface> + '_ {
        Interface::ALL.into_iter().filter(|i| self.supports(*i))
    }
}

/// Renders the RFC 8922 §5 table for the given protocols.
pub fn render_table(protocols: &[(&str, &Capabilities)]) -> String {
    let mut out = String::new();
    let _ = write!(out, "{:<6} {:<38}", "", "interface");
    for (name, _) in protocols {
        let _ = write!(out, " {name:<10}");
    }
    out.push('\n');
    for i in Interface::ALL {
        let _ = write!(out, "{:<6} {:<38}", i.abbrev(), i.description());
        for (_, caps) in protocols {
            let mark = if caps.supports(i) { "yes" } else { "-" };
            let _ = write!(out, " {mark:<10}");
        }
        out.push('\n');
    }
    let mut first = true;
    for (name, caps) in protocols {
        for i in caps.iter() {
            if let Some(note) = caps.note(i) {
                if first {
                    out.push_str("\nhow:\n");
                    first = false;
                }
                let _ = writeln!(out, "  {name} {}: {note}", i.abbrev());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_reflects_declarations() {
        let a = Capabilities::new()
            .with(Interface::Pski, "psk")
            .with(Interface::Me, "roam");
        let t = render_table(&[("wireguard", &a)]);
        let line = |abbr: &str| t.lines().find(|l| l.starts_with(abbr)).unwrap().to_string();
        assert!(line("PSKI ").contains("yes"));
        assert!(line("ME ").contains("yes"));
        assert!(line("KU ").contains('-') && !line("KU ").contains("yes"));
        assert!(t.contains("wireguard ME: roam"));
    }
}
