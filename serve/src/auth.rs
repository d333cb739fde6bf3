//! Tenants and tokens: `--auth FILE` maps bearer tokens, stored as SHA-256
//! hashes, to a tenant and a role. A request's tenant comes from its token
//! and nothing else.
//!
//! ```yaml
//! tokens:
//!   - name: search-frontend        # for the operator's eyes only
//!     sha256: 5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8
//!     tenant: acme
//!     role: read                   # read | admin
//! ```
//!
//! `medkg token --tenant acme --role read` makes a token and prints its entry.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Search, documents, the graph, stats and the gate of its tenant.
    Read,
    /// Also the engine's runs, ledger and dead letters (every tenant's:
    /// they are the deployment's, not a tenant's).
    Admin,
}

impl Role {
    /// `read` or `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Admin => "admin",
        }
    }
}

/// Who a request speaks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The tenant whose documents it sees.
    pub tenant: String,
    /// What it may do.
    pub role: Role,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    tokens: Vec<TokenEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    #[serde(default)]
    #[allow(dead_code)]
    name: Option<String>,
    sha256: String,
    tenant: String,
    role: Role,
}

/// The most tokens an auth file may hold.
pub const MAX_TOKENS: usize = 100_000;

/// The longest token a request may present (longer ones are refused unhashed).
pub const MAX_TOKEN_BYTES: usize = 512;

/// The tokens of an auth file, by hash.
#[derive(Clone, Debug, Default)]
pub struct Auth {
    by_hash: HashMap<[u8; 32], Principal>,
}

/// The SHA-256 of a token, as lowercase hex (what an auth file stores).
pub fn hash_token(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()).into())
}

fn hex(bytes: &[u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A valid tenant name: what the engine accepts as one (letters, digits, `-_.`, ≤ 128).
pub fn valid_tenant(tenant: &str) -> bool {
    !tenant.is_empty()
        && tenant.len() <= 128
        && tenant.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

impl Auth {
    /// Reads an auth file; every error names the file and the entry.
    pub fn load(path: &Path) -> anyhow::Result<Auth> {
        let meta = std::fs::metadata(path).map_err(|e| anyhow::anyhow!("--auth {}: {e}", path.display()))?;
        if meta.len() > 64 << 20 {
            anyhow::bail!("--auth {}: larger than 64 MiB", path.display());
        }
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("--auth {}: {e}", path.display()))?;
        Auth::parse(&text).map_err(|e| anyhow::anyhow!("--auth {}: {e}", path.display()))
    }

    /// Parses an auth file's text.
    pub fn parse(text: &str) -> Result<Auth, String> {
        let file: AuthFile = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
        if file.tokens.len() > MAX_TOKENS {
            return Err(format!("{} tokens: at most {MAX_TOKENS}", file.tokens.len()));
        }
        let mut auth = Auth::default();
        for (i, entry) in file.tokens.into_iter().enumerate() {
            let Some(hash) = unhex(&entry.sha256) else {
                return Err(format!("tokens[{i}].sha256 is not 64 hex digits (a SHA-256 of the token)"));
            };
            if !valid_tenant(&entry.tenant) {
                return Err(format!("tokens[{i}].tenant `{}` is not a tenant name", entry.tenant));
            }
            if auth.by_hash.insert(hash, Principal { tenant: entry.tenant, role: entry.role }).is_some() {
                return Err(format!("tokens[{i}]: the same token is listed twice"));
            }
        }
        Ok(auth)
    }

    /// Adds a token (tests and `medkg token`).
    pub fn with_token(mut self, token: &str, tenant: &str, role: Role) -> Auth {
        let hash = Sha256::digest(token.as_bytes()).into();
        self.by_hash.insert(hash, Principal { tenant: tenant.to_string(), role });
        self
    }

    /// Who `authorization` (an `Authorization` header's value) is.
    pub fn principal(&self, authorization: Option<&[u8]>) -> Result<Principal, AuthError> {
        let header = authorization.ok_or(AuthError::Missing)?;
        let text = std::str::from_utf8(header).map_err(|_| AuthError::Malformed)?;
        let (scheme, token) = text.trim().split_once(' ').ok_or(AuthError::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Malformed);
        }
        let token = token.trim();
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Unknown);
        }
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.by_hash.get(&hash).cloned().ok_or(AuthError::Unknown)
    }

    /// How many tokens it holds.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

/// Why a request has no principal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthError {
    /// No `Authorization` header.
    Missing,
    /// Not `Bearer TOKEN`.
    Malformed,
    /// A token the file does not hold.
    Unknown,
}

/// A fresh random token: 256 bits from the OS, as hex.
pub fn new_token() -> String {
    // Two v4 UUIDs carry 244 random bits from the OS generator; their
    // SHA-256 spreads them over 64 hex digits.
    let seed = format!("{}{}", uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    format!("mk_{}", hash_token(&seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_maps_hashes_to_tenants_and_roles() {
        let text = format!(
            "tokens:\n  - name: a\n    sha256: {}\n    tenant: acme\n    role: read\n  - sha256: {}\n    tenant: ops\n    role: admin\n",
            hash_token("secret-a"),
            hash_token("secret-b").to_uppercase()
        );
        let auth = Auth::parse(&text).unwrap();
        assert_eq!(auth.len(), 2);
        let a = auth.principal(Some(b"Bearer secret-a")).unwrap();
        assert_eq!((a.tenant.as_str(), a.role), ("acme", Role::Read));
        assert_eq!(auth.principal(Some(b"bearer  secret-b ")).unwrap().role, Role::Admin);
        assert_eq!(auth.principal(None), Err(AuthError::Missing));
        assert_eq!(auth.principal(Some(b"Basic c2VjcmV0LWE=")), Err(AuthError::Malformed));
        assert_eq!(auth.principal(Some(b"Bearer secret-c")), Err(AuthError::Unknown));
        assert_eq!(auth.principal(Some(b"Bearer \xff\xfe")), Err(AuthError::Malformed));
        assert_eq!(auth.principal(Some("Bearer ".repeat(200).as_bytes())), Err(AuthError::Unknown));
    }

    #[test]
    fn bad_files_say_which_entry() {
        let bad_hash = "tokens:\n  - sha256: abc\n    tenant: t\n    role: read\n";
        assert!(Auth::parse(bad_hash).unwrap_err().contains("tokens[0].sha256"));
        let bad_role = format!("tokens:\n  - sha256: {}\n    tenant: t\n    role: root\n", hash_token("x"));
        assert!(Auth::parse(&bad_role).is_err());
        let bad_tenant = format!("tokens:\n  - sha256: {}\n    tenant: \"a b\"\n    role: read\n", hash_token("x"));
        assert!(Auth::parse(&bad_tenant).unwrap_err().contains("tenant"));
        let twice = format!(
            "tokens:\n  - sha256: {h}\n    tenant: a\n    role: read\n  - sha256: {h}\n    tenant: b\n    role: read\n",
            h = hash_token("x")
        );
        assert!(Auth::parse(&twice).unwrap_err().contains("twice"));
        assert!(Auth::parse("tokens: []\nextra: 1\n").is_err());
    }

    #[test]
    fn new_tokens_differ_and_hash_to_hex() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert!(a.starts_with("mk_") && a.len() == 67);
        assert!(unhex(&hash_token(&a)).is_some());
    }
}
