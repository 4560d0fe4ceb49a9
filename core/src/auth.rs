//! Credentials in static mode (CONTRACT §4): a cluster secret, and credentials derived
//! from it, each bound to one subject.
//!
//! - The **cluster secret** is the content of the coordinator's `--token-file` (at least
//!   [`MIN_SECRET_BYTES`], surrounding whitespace ignored). Presented as is, it is accepted
//!   from anyone for anything: the single-machine lab convenience.
//! - A **node credential** is `mp1.node.<node>.<tag>`, where `tag` is the hex HMAC-SHA256,
//!   keyed with the cluster secret, of `meshprobe credential v1`, the role and the name. It
//!   lets that node's host and pod agents poll and report for that node, and nothing else:
//!   changing the name breaks the tag, and deriving another node's tag needs the secret.
//! - An **operator credential** is `mp1.operator.<name>.<tag>`: it starts rounds (what
//!   `check` does), and names its holder in the coordinator's log and rate limit.
//!
//! A credential lives as long as the secret: rotate the secret to revoke them all. Agents
//! and clients send it as `Authorization: Bearer <credential>`.

use std::fmt;

use ring::hmac;

use crate::NodeName;

/// The fewest bytes a cluster secret may have (128 bits, as base64 or hex text more).
pub const MIN_SECRET_BYTES: usize = 16;
/// The most bytes a cluster secret (or any presented credential) may have.
pub const MAX_SECRET_BYTES: usize = 4096;
/// The credential format's prefix.
const PREFIX: &str = "mp1";
/// What the HMAC is computed over, before the role and the name.
const LABEL: &[u8] = b"meshprobe credential v1\0";

/// A credential's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A node's agents: poll and report for that node.
    Node,
    /// An operator: start rounds.
    Operator,
}

impl Role {
    /// The role's name in a credential.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Operator => "operator",
        }
    }
}

/// Who a derived credential is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subject {
    /// A node's agents.
    Node(NodeName),
    /// A named operator (a person or a CI job).
    Operator(String),
}

impl Subject {
    /// An operator subject; the name is 1 to 63 characters of `a-z A-Z 0-9 - _ @ .`.
    pub fn operator(name: &str) -> Result<Self, AuthError> {
        let ok = !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'@' | b'.'));
        if ok {
            Ok(Subject::Operator(name.to_owned()))
        } else {
            Err(AuthError::BadName {
                name: crate::text::printable(name, 80),
            })
        }
    }

    /// The subject's role.
    pub fn role(&self) -> Role {
        match self {
            Subject::Node(_) => Role::Node,
            Subject::Operator(_) => Role::Operator,
        }
    }

    /// The subject's name.
    pub fn name(&self) -> &str {
        match self {
            Subject::Node(n) => n.as_str(),
            Subject::Operator(n) => n,
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.role().as_str(), self.name())
    }
}

/// What a valid credential proves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verified {
    /// The cluster secret itself: anyone, anything.
    Cluster,
    /// A derived credential's subject.
    Subject(Subject),
}

/// A secret or credential is unusable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// The secret is too short or too long.
    #[error(
        "the cluster secret has {len} bytes; it needs {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} (e.g. `head -c 32 /dev/urandom | base64`)"
    )]
    SecretSize {
        /// Its length, whitespace trimmed.
        len: usize,
    },
    /// The secret holds a byte that cannot travel in an HTTP header.
    #[error(
        "the cluster secret holds a control or non-ASCII byte; use printable text (base64 or hex)"
    )]
    SecretBytes,
    /// An operator name with characters outside the allowed set.
    #[error("operator name {name:?} must be 1 to 63 characters of a-z A-Z 0-9 - _ @ .")]
    BadName {
        /// The name, escaped.
        name: String,
    },
    /// The credential is neither the cluster secret nor a valid derived credential.
    #[error(
        "the credential is not valid for this cluster (neither its secret nor derived from it)"
    )]
    Invalid,
}

/// The cluster secret. Its `Debug` never shows it.
#[derive(Clone)]
pub struct ClusterSecret {
    text: Vec<u8>,
    key: hmac::Key,
    /// HMAC of the secret itself, to recognise it in constant time.
    own_tag: hmac::Tag,
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

impl ClusterSecret {
    /// The secret from a token file's content: surrounding whitespace (a trailing newline)
    /// is not part of it.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, AuthError> {
        let text = bytes.trim_ascii();
        if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&text.len()) {
            return Err(AuthError::SecretSize { len: text.len() });
        }
        if !text.iter().all(|b| b.is_ascii_graphic()) {
            return Err(AuthError::SecretBytes);
        }
        let key = hmac::Key::new(hmac::HMAC_SHA256, text);
        let own_tag = hmac::sign(&key, text);
        Ok(Self {
            text: text.to_vec(),
            key,
            own_tag,
        })
    }

    /// The secret as a bearer token (what a lab agent presents).
    pub fn as_token(&self) -> &[u8] {
        &self.text
    }

    fn tag(&self, subject: &Subject) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(LABEL);
        ctx.update(subject.role().as_str().as_bytes());
        ctx.update(b"\0");
        ctx.update(subject.name().as_bytes());
        ctx.sign()
    }

    /// `subject`'s credential.
    pub fn credential(&self, subject: &Subject) -> String {
        let tag = self.tag(subject);
        let mut out = format!("{PREFIX}.{}.{}.", subject.role().as_str(), subject.name());
        for b in tag.as_ref() {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }

    /// What `token` proves: the secret itself, or a derived credential's subject. Both
    /// comparisons take the same time whatever the token's content.
    pub fn verify(&self, token: &[u8]) -> Result<Verified, AuthError> {
        if token.len() > MAX_SECRET_BYTES {
            return Err(AuthError::Invalid);
        }
        if hmac::verify(&self.key, token, self.own_tag.as_ref()).is_ok() {
            return Ok(Verified::Cluster);
        }
        let text = std::str::from_utf8(token).map_err(|_| AuthError::Invalid)?;
        let (subject, tag) = parse(text).ok_or(AuthError::Invalid)?;
        let mut ctx_input = Vec::with_capacity(64);
        ctx_input.extend_from_slice(LABEL);
        ctx_input.extend_from_slice(subject.role().as_str().as_bytes());
        ctx_input.push(0);
        ctx_input.extend_from_slice(subject.name().as_bytes());
        hmac::verify(&self.key, &ctx_input, &tag).map_err(|_| AuthError::Invalid)?;
        Ok(Verified::Subject(subject))
    }
}

/// `mp1.<role>.<name>.<hex tag>` split, the name checked; `None` when malformed.
fn parse(text: &str) -> Option<(Subject, Vec<u8>)> {
    let rest = text.strip_prefix(PREFIX)?.strip_prefix('.')?;
    let (role, rest) = rest.split_once('.')?;
    let (name, hex) = rest.rsplit_once('.')?;
    if hex.len() != 64 {
        return None;
    }
    let tag = (0..32)
        .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    let subject = match role {
        "node" => Subject::Node(NodeName::new(name).ok()?),
        "operator" => Subject::operator(name).ok()?,
        _ => return None,
    };
    Some((subject, tag))
}

/// Whether `token` looks like a derived credential (rather than, say, a Kubernetes
/// ServiceAccount token): the coordinator asks the API server only about the others.
pub fn is_derived_credential(token: &[u8]) -> bool {
    token.starts_with(b"mp1.")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> ClusterSecret {
        ClusterSecret::from_bytes(b"  correct-horse-battery-staple-42\n").expect("secret")
    }

    fn node(n: &str) -> Subject {
        Subject::Node(NodeName::new(n).expect("name"))
    }

    #[test]
    fn the_secret_itself_is_the_cluster_credential() {
        let s = secret();
        assert_eq!(
            s.verify(b"correct-horse-battery-staple-42"),
            Ok(Verified::Cluster)
        );
        assert_eq!(
            s.verify(b"correct-horse-battery-staple-43"),
            Err(AuthError::Invalid)
        );
        assert_eq!(s.verify(b""), Err(AuthError::Invalid));
    }

    #[test]
    fn a_node_credential_proves_that_node_only() {
        let s = secret();
        let c = s.credential(&node("worker-1.example"));
        assert!(c.starts_with("mp1.node.worker-1.example."), "{c}");
        assert_eq!(
            s.verify(c.as_bytes()),
            Ok(Verified::Subject(node("worker-1.example")))
        );
        // Renamed: the tag no longer matches.
        let forged = c.replace("worker-1.example", "worker-2.example");
        assert_eq!(s.verify(forged.as_bytes()), Err(AuthError::Invalid));
        // Another role with the same name and tag.
        let forged = c.replace("mp1.node.", "mp1.operator.");
        assert_eq!(s.verify(forged.as_bytes()), Err(AuthError::Invalid));
        // Another secret's credential.
        let other = ClusterSecret::from_bytes(b"another-secret-of-enough-length").expect("ok");
        assert_eq!(other.verify(c.as_bytes()), Err(AuthError::Invalid));
        // One flipped hex digit.
        let mut flipped = c.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
        assert_eq!(s.verify(&flipped), Err(AuthError::Invalid));
    }

    #[test]
    fn operator_credentials_and_names() {
        let s = secret();
        let op = Subject::operator("ci@pipeline").expect("name");
        let c = s.credential(&op);
        assert_eq!(s.verify(c.as_bytes()), Ok(Verified::Subject(op)));
        assert!(Subject::operator("").is_err());
        assert!(Subject::operator("a b").is_err());
        assert!(Subject::operator("\u{1b}[31m").is_err());
    }

    #[test]
    fn weak_or_unprintable_secrets_are_refused() {
        assert_eq!(
            ClusterSecret::from_bytes(b"short\n").map(drop),
            Err(AuthError::SecretSize { len: 5 })
        );
        assert_eq!(
            ClusterSecret::from_bytes(b"0123456789abcdef\x07xyz").map(drop),
            Err(AuthError::SecretBytes)
        );
        assert!(format!("{:?}", secret()).contains(".."));
        assert!(!format!("{:?}", secret()).contains("horse"));
    }

    #[test]
    fn malformed_credentials_are_invalid_not_panics() {
        let s = secret();
        for t in [
            "mp1.",
            "mp1.node.",
            "mp1.node.a.",
            "mp1.node.a.zz",
            "mp1.node..0000000000000000000000000000000000000000000000000000000000000000",
            "mp1.root.a.0000000000000000000000000000000000000000000000000000000000000000",
            "mp1.node.a.é00000000000000000000000000000000000000000000000000000000000000",
        ] {
            assert_eq!(s.verify(t.as_bytes()), Err(AuthError::Invalid), "{t}");
        }
        assert_eq!(s.verify(&[0xff; 5000]), Err(AuthError::Invalid));
    }
}
