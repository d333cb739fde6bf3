//! `allow_hosts` entries: which hosts a `fetch` or `download` stage may call.
//!
//! An entry is one of:
//! - a host name (`clinicaltrials.gov`): that host only;
//! - `*.` and a domain of two labels or more (`*.nih.gov`): its subdomains;
//! - an IP address (`127.0.0.1`, `::1`) or a CIDR range (`10.0.0.0/8`):
//!   those addresses, which is the only way to let a stage reach a
//!   loopback, private, link-local or otherwise non-public address.
//!
//! A listed *name* never opens a private address: names are resolved when
//! the connection is made, and every address they resolve to must be
//! public or inside a listed range. Anything else (`*`, `""`, a URL, a
//! wildcard over numbers such as `*.0.0.1`) is refused at validation.

use std::net::IpAddr;

/// One validated `allow_hosts` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowEntry {
    /// Exactly this host name (lowercase, no trailing dot).
    Name(String),
    /// Any subdomain of this domain (from `*.domain`).
    Subdomains(String),
    /// Addresses in this range (a single address is a /32 or /128).
    Net {
        /// The range's first address.
        addr: IpAddr,
        /// Its prefix length.
        prefix: u8,
    },
}

impl AllowEntry {
    /// Reads an entry, or says why it is not one.
    pub fn parse(entry: &str) -> Result<AllowEntry, String> {
        let text = entry.trim().to_ascii_lowercase();
        let refuse = |why: &str| Err(format!("allow_hosts entry `{entry}` {why}"));
        if text.is_empty() {
            return refuse("is empty");
        }
        if let Some((addr, prefix)) = text.split_once('/') {
            let addr: IpAddr = match addr.trim_start_matches('[').trim_end_matches(']').parse() {
                Ok(addr) => addr,
                Err(_) if text.contains("://") => return refuse("is a URL; list the host alone"),
                Err(_) => return refuse("is not an address range (e.g. 10.0.0.0/8)"),
            };
            let max = if addr.is_ipv4() { 32 } else { 128 };
            return match prefix.parse::<u8>() {
                Ok(prefix) if prefix <= max => Ok(AllowEntry::Net { addr: canonical(addr), prefix }),
                _ => refuse(&format!("has a prefix length that is not 0 to {max}")),
            };
        }
        if let Ok(addr) = text.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            let addr = canonical(addr);
            return Ok(AllowEntry::Net { addr, prefix: if addr.is_ipv4() { 32 } else { 128 } });
        }
        let (wildcard, name) = match text.strip_prefix("*.") {
            Some(domain) => (true, domain),
            None => (false, text.as_str()),
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        if !is_host_name(name) {
            return refuse("is not a host name, `*.domain`, an IP address or a CIDR range");
        }
        if wildcard {
            if name.split('.').count() < 2 {
                return refuse("covers a whole top-level domain; name a domain (`*.example.org`)");
            }
            if name.split('.').all(|l| l.bytes().all(|b| b.is_ascii_digit())) {
                return refuse("is a wildcard over numbers; list an address range (CIDR) instead");
            }
            return Ok(AllowEntry::Subdomains(name.to_string()));
        }
        if name.split('.').all(|l| l.bytes().all(|b| b.is_ascii_digit())) {
            return refuse("is not a valid IP address");
        }
        Ok(AllowEntry::Name(name.to_string()))
    }

    /// Whether this entry names `host` (a lowercase name without trailing dot).
    pub fn matches_name(&self, host: &str) -> bool {
        match self {
            AllowEntry::Name(name) => name == host,
            AllowEntry::Subdomains(domain) => {
                host.len() > domain.len() + 1
                    && host.ends_with(domain.as_str())
                    && host[..host.len() - domain.len()].ends_with('.')
            }
            AllowEntry::Net { .. } => false,
        }
    }

    /// Whether this entry's range holds `ip`.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let AllowEntry::Net { addr, prefix } = self else { return false };
        match (canonical(ip), addr) {
            (IpAddr::V4(ip), IpAddr::V4(net)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(*prefix)).unwrap_or(0);
                u32::from(ip) & mask == u32::from(*net) & mask
            }
            (IpAddr::V6(ip), IpAddr::V6(net)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(*prefix)).unwrap_or(0);
                u128::from(ip) & mask == u128::from(*net) & mask
            }
            _ => false,
        }
    }
}

/// An IPv4 address written as IPv6 (`::ffff:a.b.c.d`) becomes that IPv4 address.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether `ip` is a public unicast address: not loopback, private (RFC 1918,
/// IPv6 unique-local), carrier-grade NAT, link-local, site-local,
/// multicast, broadcast, unspecified, documentation, benchmarking or
/// reserved, also when an IPv6 address embeds an IPv4 one (mapped,
/// compatible, NAT64, 6to4).
pub fn is_public(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(a == 0 // "this network"
                || a == 10
                || a == 127
                || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT
                || (a == 169 && b == 254)
                || (a == 172 && (16..32).contains(&b))
                || (a == 192 && b == 168)
                || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
                || (a == 192 && b == 0 && c == 2) // documentation
                || (a == 198 && (b == 18 || b == 19)) // benchmarking
                || (a == 198 && b == 51 && c == 100)
                || (a == 203 && b == 0 && c == 113)
                || a >= 224) // multicast, reserved, broadcast
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let embedded =
                |hi: u16, lo: u16| IpAddr::V4(std::net::Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)));
            if s[..6] == [0; 6] {
                // ::, ::1 and IPv4-compatible ::a.b.c.d
                return !(v6.is_unspecified() || v6.is_loopback()) && is_public(embedded(s[6], s[7]));
            }
            if s[0] == 0x64 && s[1] == 0xff9b {
                // NAT64 (64:ff9b::/96, 64:ff9b:1::/48)
                return is_public(embedded(s[6], s[7]));
            }
            if s[0] == 0x2002 {
                // 6to4 embeds the IPv4 address in bits 16..48.
                return is_public(embedded(s[1], s[2]));
            }
            !((s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] & 0xffc0) == 0xfec0 // site-local
                || (s[0] & 0xff00) == 0xff00 // multicast
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x2001 && s[1] == 0) // Teredo
                || (s[0] == 0x100 && s[1..4] == [0; 3])) // discard
        }
    }
}

/// A DNS host name: dot-separated labels of letters, digits and inner
/// hyphens (or underscores), each 1 to 63 bytes, 253 bytes in all.
fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_names_wildcards_addresses_or_ranges() {
        assert_eq!(AllowEntry::parse("ClinicalTrials.gov."), Ok(AllowEntry::Name("clinicaltrials.gov".into())));
        assert_eq!(AllowEntry::parse("*.nih.gov"), Ok(AllowEntry::Subdomains("nih.gov".into())));
        let v4: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(AllowEntry::parse("127.0.0.1"), Ok(AllowEntry::Net { addr: v4, prefix: 32 }));
        assert_eq!(AllowEntry::parse("::ffff:127.0.0.1"), Ok(AllowEntry::Net { addr: v4, prefix: 32 }));
        assert!(matches!(AllowEntry::parse("10.0.0.0/8"), Ok(AllowEntry::Net { prefix: 8, .. })));
        assert!(matches!(AllowEntry::parse("[fd00::]/8"), Ok(AllowEntry::Net { prefix: 8, .. })));
        for bad in [
            "",
            " ",
            "*",
            "*.",
            "*.gov",
            "*.0.0.1",
            "https://example.org",
            "exa mple.org",
            "10.0.0.0/33",
            "1.2.3",
            "-a.org",
            "a..org",
            "x/y",
        ] {
            assert!(AllowEntry::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn names_and_ranges_match_exactly() {
        let sub = AllowEntry::parse("*.nih.gov").unwrap();
        assert!(sub.matches_name("eutils.ncbi.nlm.nih.gov"));
        assert!(
            !sub.matches_name("nih.gov") && !sub.matches_name("evilnih.gov") && !sub.matches_name("nih.gov.evil.org")
        );
        let net = AllowEntry::parse("127.0.0.0/8").unwrap();
        assert!(net.contains("127.1.2.3".parse().unwrap()));
        assert!(net.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!net.contains("128.0.0.1".parse().unwrap()));
        assert!(AllowEntry::parse("0.0.0.0/0").unwrap().contains("8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn internal_addresses_in_every_spelling_are_not_public() {
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "198.18.0.1",
            "::1",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:7f00:1",
            "0:0:0:0:0:ffff:127.0.0.1",
            "::ffff:0.0.0.0",
            "::127.0.0.1",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "ff02::1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
            "2001:db8::1",
        ] {
            assert!(!is_public(internal.parse().unwrap()), "{internal} counted as public");
        }
        for public in ["8.8.8.8", "130.14.29.110", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"] {
            assert!(is_public(public.parse().unwrap()), "{public} counted as internal");
        }
    }
}
