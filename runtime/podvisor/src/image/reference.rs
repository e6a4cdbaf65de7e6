//! Image references, normalised the way Docker and containerd do, so that
//! `busybox`, `docker.io/library/busybox:latest` and
//! `index.docker.io/library/busybox` name the same image.

use std::fmt;

/// The registry that names without a host refer to.
pub const DEFAULT_REGISTRY: &str = "docker.io";
const DEFAULT_TAG: &str = "latest";
/// Docker's limit on the normalised `host/path` (`docker.io/library/...`).
const NAME_MAX: usize = 255;

/// A parsed and normalised image reference: `registry/repository` plus a tag
/// or a digest (never both: as containerd does, a digest makes the tag moot).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// Host with optional port: `docker.io`, `127.0.0.1:5000`, `[::1]:5000`.
    pub registry: String,
    /// Path inside the registry: `library/busybox`.
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:<64 hex>` or `sha512:<128 hex>`.
    pub digest: Option<String>,
}

/// Why a string is not an image reference; the text is shown to the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ReferenceError(pub String);

fn bad<T>(why: impl Into<String>) -> Result<T, ReferenceError> {
    Err(ReferenceError(why.into()))
}

impl ImageRef {
    pub fn parse(input: &str) -> Result<ImageRef, ReferenceError> {
        if input.is_empty() {
            return bad("empty reference");
        }
        if input.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return bad("reference contains whitespace");
        }
        let (name_tag, digest) = match input.split_once('@') {
            Some((n, d)) => (n, Some(parse_digest(d)?)),
            None => (input, None),
        };
        // A tag is a ':' after the last '/', so `host:5000/app` has none.
        let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_tag[last_slash..].rfind(':') {
            Some(i) => {
                let at = last_slash + i;
                (&name_tag[..at], Some(&name_tag[at + 1..]))
            }
            None => (name_tag, None),
        };
        if let Some(t) = tag {
            validate_tag(t)?;
        }
        let (registry, path) = split_registry(name);
        validate_registry(registry)?;
        let registry = if registry == "index.docker.io" {
            DEFAULT_REGISTRY
        } else {
            registry
        };
        validate_path(path)?;
        let repository = if registry == DEFAULT_REGISTRY && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_string()
        };
        // On the normal form, as Docker does: it is what the store records and
        // what the image is looked up by afterwards.
        let full = registry.len() + 1 + repository.len();
        if full > NAME_MAX {
            return bad(format!(
                "name {registry}/{repository} is {full} characters, longer than {NAME_MAX}"
            ));
        }
        let tag = match (&digest, tag) {
            (Some(_), _) => None,
            (None, Some(t)) => Some(t.to_string()),
            (None, None) => Some(DEFAULT_TAG.to_string()),
        };
        Ok(ImageRef {
            registry: registry.to_string(),
            repository,
            tag,
            digest,
        })
    }

    /// `registry/repository`, the name repo tags and repo digests start with.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// `registry/repository:tag`, when the reference has a tag.
    pub fn repo_tag(&self) -> Option<String> {
        self.tag.as_ref().map(|t| format!("{}:{t}", self.name()))
    }

    /// `registry/repository@digest` for any digest in this repository.
    pub fn repo_digest(&self, digest: &str) -> String {
        format!("{}@{digest}", self.name())
    }

    /// The same repository at `digest`.
    pub fn with_digest(&self, digest: &str) -> ImageRef {
        ImageRef {
            tag: None,
            digest: Some(digest.to_string()),
            ..self.clone()
        }
    }

    /// The host without its port, for matching loopback and insecure lists.
    pub fn host(&self) -> &str {
        host_of(&self.registry)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// `host:port` → `host`; `[::1]:5000` → `::1`.
pub fn host_of(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    registry.split(':').next().unwrap_or(registry)
}

/// Docker's rule: the first component is a registry when it looks like a
/// host (has a dot or a port, is `localhost`, or has capitals, which
/// repository names cannot have).
fn split_registry(name: &str) -> (&str, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains('.')
                || first.contains(':')
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            (first, rest)
        }
        _ => (DEFAULT_REGISTRY, name),
    }
}

fn validate_registry(registry: &str) -> Result<(), ReferenceError> {
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        let Some((ip, after)) = rest.split_once(']') else {
            return bad(format!("registry {registry:?}: unclosed '['"));
        };
        if ip.parse::<std::net::Ipv6Addr>().is_err() {
            return bad(format!("registry {registry:?}: bad IPv6 address"));
        }
        match after {
            "" => (None, None),
            p => match p.strip_prefix(':') {
                Some(p) => (None, Some(p)),
                None => return bad(format!("registry {registry:?}: junk after ']'")),
            },
        }
    } else {
        match registry.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(registry), None),
        }
    };
    if let Some(host) = host {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if !host.split('.').all(label_ok) {
            return bad(format!("registry {registry:?}: bad host name"));
        }
    }
    if let Some(port) = port {
        if port.is_empty() || port.len() > 5 || !port.chars().all(|c| c.is_ascii_digit()) {
            return bad(format!("registry {registry:?}: bad port"));
        }
    }
    Ok(())
}

/// Path components: lowercase alphanumerics joined by `.`, `_`, `__` or
/// runs of `-`.
fn validate_path(path: &str) -> Result<(), ReferenceError> {
    if path.is_empty() {
        return bad("empty repository name");
    }
    if path.chars().any(|c| c.is_ascii_uppercase()) {
        return bad("repository name must be lowercase");
    }
    for component in path.split('/') {
        if !component_ok(component) {
            return bad(format!("bad repository name component {component:?}"));
        }
    }
    Ok(())
}

fn component_ok(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or "-"+, always between alphanumerics.
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn validate_tag(tag: &str) -> Result<(), ReferenceError> {
    let b = tag.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&x| x.is_ascii_alphanumeric() || matches!(x, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        bad(format!("bad tag {tag:?}"))
    }
}

/// Checks `algorithm:hex`; only the algorithms registries use are accepted,
/// since we must be able to verify what we download.
pub fn parse_digest(d: &str) -> Result<String, ReferenceError> {
    let Some((alg, hex)) = d.split_once(':') else {
        return bad(format!("bad digest {d:?}: expected algorithm:hex"));
    };
    let len = match alg {
        "sha256" => 64,
        "sha512" => 128,
        _ => return bad(format!("unsupported digest algorithm {alg:?}")),
    };
    if hex.len() != len || !hex.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return bad(format!(
            "bad digest {d:?}: expected {len} lowercase hex digits"
        ));
    }
    Ok(d.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    fn norm(s: &str) -> String {
        ImageRef::parse(s).unwrap().to_string()
    }

    #[test]
    fn the_length_limit_applies_to_the_normal_form() {
        // "docker.io/library/" is 18 characters: 237 more make 255.
        let fits = "a".repeat(237);
        assert_eq!(norm(&fits), format!("docker.io/library/{fits}:latest"));
        let over = "a".repeat(238);
        let err = ImageRef::parse(&over).unwrap_err();
        assert!(err.0.contains("256 characters, longer than 255"), "{err}");
        // Found by fuzzing: it parsed, but its own normal form did not.
        assert!(ImageRef::parse(&format!("{over}:v1")).is_err());
    }

    #[test]
    fn docker_hub_names_are_normalised() {
        assert_eq!(norm("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(norm("library/busybox"), "docker.io/library/busybox:latest");
        assert_eq!(
            norm("docker.io/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            norm("index.docker.io/library/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(norm("bitnami/redis:7"), "docker.io/bitnami/redis:7");
        assert_eq!(norm("localhost:5000"), "docker.io/library/localhost:5000");
    }

    #[test]
    fn registries_with_ports_and_ipv6() {
        let r = ImageRef::parse("127.0.0.1:5000/app/web:v1").unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "app/web");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.host(), "127.0.0.1");
        assert_eq!(norm("localhost/app"), "localhost/app:latest");
        let r = ImageRef::parse("[::1]:5000/app").unwrap();
        assert_eq!(r.registry, "[::1]:5000");
        assert_eq!(r.host(), "::1");
        assert_eq!(norm("Registry.Example/app"), "Registry.Example/app:latest");
    }

    #[test]
    fn digests_win_over_tags() {
        let r = ImageRef::parse(&format!("busybox@{D}")).unwrap();
        assert_eq!(r.digest.as_deref(), Some(D));
        assert_eq!(r.tag, None);
        assert_eq!(r.to_string(), format!("docker.io/library/busybox@{D}"));
        let r = ImageRef::parse(&format!("quay.io/a/b:1.0@{D}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.repo_digest(D), format!("quay.io/a/b@{D}"));
    }

    #[test]
    fn bad_references_are_refused() {
        // Each input with the part of the message that names its fault.
        let long = format!("a/{}", "b".repeat(300));
        // The limit applies to the normalised name (docker.io/a/bbb…).
        let too_long = format!("is 312 characters, longer than {NAME_MAX}");
        for (s, why) in [
            ("", "empty reference"),
            ("Busybox", "repository name must be lowercase"),
            ("busybox:", "bad tag \"\""),
            ("busybox:-x", "bad tag \"-x\""),
            ("busybox@sha256:abc", "expected 64 lowercase hex digits"),
            ("busybox@md5:0123", "unsupported digest algorithm \"md5\""),
            ("a//b", "bad repository name component \"\""),
            ("-a", "bad repository name component \"-a\""),
            ("a-", "bad repository name component \"a-\""),
            ("a..b", "bad repository name component \"a..b\""),
            ("a___b", "bad repository name component \"a___b\""),
            ("host:port/x", "registry \"host:port\": bad port"),
            ("bad host/x", "reference contains whitespace"),
            ("[::1/x", "registry \"[::1\": unclosed '['"),
            ("reg.io/", "empty repository name"),
            (":tag", "empty repository name"),
            (long.as_str(), too_long.as_str()),
        ] {
            match ImageRef::parse(s) {
                Ok(r) => panic!("{s:?} was accepted as {r}"),
                Err(ReferenceError(m)) => assert!(m.contains(why), "{s:?}: {m}"),
            }
        }
        assert!(ImageRef::parse("a__b/c.d/e--f_g").is_ok());
    }
}
