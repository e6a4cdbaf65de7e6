//! Talking to registries through `oci-client`: which endpoints to try for a
//! registry (mirrors first), plain HTTP or TLS, credentials from CRI's
//! AuthConfig, manifest resolution down to linux/amd64, blob downloads, and
//! turning the registry's errors into `ImageError`s a user can act on.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use base64::Engine;
use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{
    OciDescriptor, OciImageManifest, OciManifest, IMAGE_MANIFEST_LIST_MEDIA_TYPE,
    IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::{Deserialize, Serialize};

use super::error::{ImageError, Result};
use super::reference::{host_of, ImageRef, DEFAULT_REGISTRY};

/// The platform every pod VM runs.
pub const OS: &str = "linux";
pub const ARCHITECTURE: &str = "amd64";

const MANIFEST_TYPES: &[&str] = &[
    OCI_IMAGE_INDEX_MEDIA_TYPE,
    IMAGE_MANIFEST_LIST_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE,
    IMAGE_MANIFEST_MEDIA_TYPE,
];
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Between two reads; a slow but moving download is never cut.
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// Where images come from. Part of the daemon's TOML config; every key is
/// optional.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// Registry host (as in image names: `docker.io`, `quay.io`,
    /// `registry.local:5000`; `*` for any) → endpoint URLs tried in order
    /// before the registry itself, e.g. `https://mirror.gcr.io`.
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// Hosts (`host` or `host:port`) reached over plain HTTP. Loopback
    /// registries (127.0.0.0/8, ::1, localhost) always are, as with Docker.
    pub insecure: Vec<String>,
}

/// Registry credentials, as CRI's AuthConfig carries them. Empty fields are
/// unset.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    /// base64 of `username:password`.
    pub auth: String,
    /// The registry these credentials are for (`https://index.docker.io/v1/`,
    /// `quay.io`). Empty: the registry the image is pulled from.
    pub server_address: String,
    /// An OAuth2 refresh token, exchanged at the registry's token service.
    pub identity_token: String,
    /// A bearer token sent to the registry as is.
    pub registry_token: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |s: &str| if s.is_empty() { "" } else { "<redacted>" };
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &set(&self.password))
            .field("auth", &set(&self.auth))
            .field("server_address", &self.server_address)
            .field("identity_token", &set(&self.identity_token))
            .field("registry_token", &set(&self.registry_token))
            .finish()
    }
}

/// What to send, once an identity token has been exchanged.
enum Auth {
    Plain(RegistryAuth),
    IdentityToken(String),
}

impl Credentials {
    fn auth(&self) -> std::result::Result<Auth, String> {
        if !self.registry_token.is_empty() {
            return Ok(Auth::Plain(RegistryAuth::Bearer(
                self.registry_token.clone(),
            )));
        }
        if !self.identity_token.is_empty() {
            return Ok(Auth::IdentityToken(self.identity_token.clone()));
        }
        if !self.username.is_empty() {
            return Ok(Auth::Plain(RegistryAuth::Basic(
                self.username.clone(),
                self.password.clone(),
            )));
        }
        if !self.auth.is_empty() {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(self.auth.trim())
                .map_err(|_| "auth is not valid base64".to_string())?;
            let text =
                String::from_utf8(decoded).map_err(|_| "auth is not valid UTF-8".to_string())?;
            let (user, pass) = text
                .split_once(':')
                .ok_or_else(|| "auth is not base64 of user:password".to_string())?;
            return Ok(Auth::Plain(RegistryAuth::Basic(user.into(), pass.into())));
        }
        Ok(Auth::Plain(RegistryAuth::Anonymous))
    }

    /// Whether these credentials may be sent to `host` when pulling from
    /// `registry`: to the registry itself unless `server_address` names
    /// another host, never to a mirror it does not name (a mirror must not
    /// collect the user's registry password).
    fn applies_to(&self, registry: &str, host: &str) -> bool {
        if self.server_address.is_empty() {
            return same_registry(registry, host);
        }
        same_registry(&server_host(&self.server_address), host)
    }
}

/// `https://index.docker.io/v1/` → `index.docker.io`.
fn server_host(address: &str) -> String {
    let s = address
        .strip_prefix("https://")
        .or_else(|| address.strip_prefix("http://"))
        .unwrap_or(address);
    s.split('/').next().unwrap_or(s).to_string()
}

fn same_registry(a: &str, b: &str) -> bool {
    let canon = |h: &str| match h {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            DEFAULT_REGISTRY.to_string()
        }
        h => h.to_ascii_lowercase(),
    };
    canon(a) == canon(b)
}

/// One place to try: a mirror or the registry itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `host[:port]` as oci-client addresses it.
    pub host: String,
    pub plain_http: bool,
    pub mirror: bool,
}

pub fn is_loopback(host: &str) -> bool {
    let h = host_of(host);
    h.eq_ignore_ascii_case("localhost") || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl RegistryConfig {
    /// Refuses mirror URLs we could not use, at start-up rather than at the
    /// first pull.
    pub fn validate(&self) -> std::result::Result<(), String> {
        for (registry, urls) in &self.mirrors {
            for url in urls {
                self.parse_endpoint(url)
                    .map_err(|e| format!("mirror {url:?} of {registry}: {e}"))?;
            }
        }
        Ok(())
    }

    fn plain_http(&self, host: &str) -> bool {
        is_loopback(host)
            || self
                .insecure
                .iter()
                .any(|i| i.eq_ignore_ascii_case(host) || i.eq_ignore_ascii_case(host_of(host)))
    }

    fn parse_endpoint(&self, url: &str) -> std::result::Result<Endpoint, String> {
        let (scheme, rest) = match url.split_once("://") {
            Some((s, r)) => (Some(s), r),
            None => (None, url),
        };
        let (host, path) = match rest.split_once('/') {
            Some((h, p)) => (h, p),
            None => (rest, ""),
        };
        if host.is_empty() {
            return Err("no host".into());
        }
        // oci-client always puts /v2/ after the host, so only that prefix fits.
        if !matches!(path.trim_end_matches('/'), "" | "v2") {
            return Err("endpoints with a path are not supported".into());
        }
        let plain_http = match scheme {
            Some("http") => true,
            Some("https") => false,
            Some(s) => return Err(format!("unknown scheme {s:?}")),
            None => self.plain_http(host),
        };
        Ok(Endpoint {
            host: host.to_string(),
            plain_http,
            mirror: true,
        })
    }

    /// Where to look for images of `registry`, in order: its mirrors, then
    /// the registry itself.
    pub fn endpoints(&self, registry: &str) -> Vec<Endpoint> {
        let mirrors = self
            .mirrors
            .get(registry)
            .or_else(|| self.mirrors.get("*"))
            .map(|v| v.as_slice())
            .unwrap_or_default();
        let mut out: Vec<Endpoint> = mirrors
            .iter()
            .filter_map(|m| self.parse_endpoint(m).ok())
            .filter(|e| e.host != registry)
            .collect();
        out.push(Endpoint {
            host: registry.to_string(),
            plain_http: self.plain_http(registry),
            mirror: false,
        });
        out
    }
}

/// The manifests a reference resolved to.
pub(crate) struct Resolved {
    /// Digest of what the reference names (the index, for a multi-platform
    /// image): the image's repo digest, as containerd records it.
    pub top_digest: String,
    /// The index, when there was one: (digest, bytes).
    pub index: Option<(String, Vec<u8>)>,
    pub manifest_digest: String,
    pub manifest_bytes: Vec<u8>,
    pub manifest: OciImageManifest,
}

/// A pull's connection to one endpoint, chosen by who first resolves the
/// manifest. A fresh oci-client per pull: its auth store is first-come and
/// must not hand one caller's credentials to another's pull.
pub(crate) struct Session {
    client: Client,
    reference: Reference,
    /// How errors name the image: the normalised reference.
    shown: String,
    pub endpoint: Endpoint,
}

/// Connects to the first endpoint that can resolve `image`'s manifest.
/// Mirrors that fail are skipped (and logged); the registry's own error is
/// the one reported.
pub(crate) async fn resolve(
    config: &RegistryConfig,
    image: &ImageRef,
    credentials: Option<&Credentials>,
) -> Result<(Session, Resolved)> {
    let shown = image.to_string();
    let mut last = None;
    for endpoint in config.endpoints(&image.registry) {
        let attempt = async {
            let session = Session::connect(&endpoint, image, credentials, &shown).await?;
            let resolved = session.resolve().await?;
            Ok::<_, ImageError>((session, resolved))
        };
        match attempt.await {
            Ok(found) => return Ok(found),
            Err(e) => {
                if endpoint.mirror {
                    tracing::info!(mirror = %endpoint.host, image = %shown, error = %e, "mirror failed; trying the next endpoint");
                }
                last = Some(e);
            }
        }
    }
    Err(last.expect("the registry itself is always an endpoint"))
}

impl Session {
    async fn connect(
        endpoint: &Endpoint,
        image: &ImageRef,
        credentials: Option<&Credentials>,
        shown: &str,
    ) -> Result<Session> {
        let client_config = ClientConfig {
            protocol: if endpoint.plain_http {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            user_agent: concat!("podvisor/", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        };
        let client = Client::try_from(client_config).map_err(|e| ImageError::Registry {
            reference: shown.to_string(),
            message: format!("creating the registry client: {e}"),
        })?;
        let mut reference = match &image.digest {
            Some(d) => {
                Reference::with_digest(image.registry.clone(), image.repository.clone(), d.clone())
            }
            None => Reference::with_tag(
                image.registry.clone(),
                image.repository.clone(),
                image.tag.clone().unwrap_or_else(|| "latest".into()),
            ),
        };
        if endpoint.mirror {
            // Sent to the mirror with ?ns=<registry>, as containerd does.
            reference.set_mirror_registry(endpoint.host.clone());
        }
        let auth = match credentials {
            Some(c) if c.applies_to(&image.registry, &endpoint.host) => match c.auth() {
                Ok(Auth::Plain(a)) => a,
                Ok(Auth::IdentityToken(t)) => {
                    exchange_identity_token(endpoint, image, &t, shown).await?
                }
                Err(reason) => {
                    return Err(ImageError::Unauthorized {
                        reference: shown.to_string(),
                        message: reason,
                    })
                }
            },
            _ => RegistryAuth::Anonymous,
        };
        let session = Session {
            client,
            reference,
            shown: shown.to_string(),
            endpoint: endpoint.clone(),
        };
        // Credentials are attached to the client here; every later request
        // of this session (manifests, blobs) uses them, or the token they buy.
        session
            .client
            .auth(
                &session.reference,
                &auth,
                oci_client::RegistryOperation::Pull,
            )
            .await
            .map_err(|e| session.error(e))?;
        Ok(session)
    }

    /// Fetches the manifest; for an index, picks linux/amd64 and fetches
    /// that manifest by digest.
    async fn resolve(&self) -> Result<Resolved> {
        let (bytes, digest) = self
            .client
            .pull_manifest_raw(&self.reference, &RegistryAuth::Anonymous, MANIFEST_TYPES)
            .await
            .map_err(|e| self.error(e))?;
        match self.parse_manifest(&bytes)? {
            OciManifest::Image(manifest) => Ok(Resolved {
                top_digest: digest.clone(),
                index: None,
                manifest_digest: digest,
                manifest_bytes: bytes.to_vec(),
                manifest,
            }),
            OciManifest::ImageIndex(index) => {
                let child = pick_platform(&index.manifests).ok_or_else(|| {
                    let platforms: Vec<String> = index
                        .manifests
                        .iter()
                        .filter_map(|m| m.platform.as_ref())
                        .map(|p| match &p.variant {
                            Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                            None => format!("{}/{}", p.os, p.architecture),
                        })
                        .collect();
                    ImageError::NotInRegistry {
                        reference: self.shown.clone(),
                        message: format!(
                            "no {OS}/{ARCHITECTURE} image in the manifest list (it has: {})",
                            platforms.join(", ")
                        ),
                    }
                })?;
                let child_ref = self.reference.clone_with_digest(child.clone());
                let (child_bytes, child_digest) = self
                    .client
                    .pull_manifest_raw(&child_ref, &RegistryAuth::Anonymous, MANIFEST_TYPES)
                    .await
                    .map_err(|e| self.error(e))?;
                match self.parse_manifest(&child_bytes)? {
                    OciManifest::Image(manifest) => Ok(Resolved {
                        top_digest: digest.clone(),
                        index: Some((digest, bytes.to_vec())),
                        manifest_digest: child_digest,
                        manifest_bytes: child_bytes.to_vec(),
                        manifest,
                    }),
                    OciManifest::ImageIndex(_) => Err(ImageError::Registry {
                        reference: self.shown.clone(),
                        message: format!("{child} is a nested manifest list"),
                    }),
                }
            }
        }
    }

    fn parse_manifest(&self, bytes: &[u8]) -> Result<OciManifest> {
        #[derive(Deserialize)]
        struct Versioned {
            #[serde(rename = "schemaVersion")]
            schema_version: Option<i64>,
        }
        let unsupported = |message: String| ImageError::Registry {
            reference: self.shown.clone(),
            message,
        };
        let v: Versioned = serde_json::from_slice(bytes)
            .map_err(|e| unsupported(format!("unreadable manifest: {e}")))?;
        if v.schema_version != Some(2) {
            return Err(unsupported(format!(
                "manifest schema version {:?} is not supported (Docker schema 1 images are deprecated; push the image again)",
                v.schema_version.unwrap_or(0)
            )));
        }
        serde_json::from_slice(bytes).map_err(|e| unsupported(format!("unreadable manifest: {e}")))
    }

    /// Streams blob `desc` into `sink`, which verifies it.
    pub(crate) async fn fetch_blob<S: BlobSink>(
        &self,
        desc: &OciDescriptor,
        sink: &mut S,
    ) -> Result<()> {
        let mut stream = self
            .client
            .pull_blob_stream(&self.reference, desc)
            .await
            .map_err(|e| self.error(e))?;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| ImageError::Registry {
                reference: self.shown.clone(),
                message: format!("downloading {}: {e}", desc.digest),
            })?;
            sink.write(&chunk)?;
        }
        Ok(())
    }

    fn error(&self, e: OciDistributionError) -> ImageError {
        classify(&self.shown, &self.endpoint, e)
    }
}

/// Where downloaded bytes go (the store's verifying blob writer).
pub(crate) trait BlobSink {
    fn write(&mut self, chunk: &[u8]) -> Result<()>;
}

/// linux/amd64, preferring entries without a variant; attestation entries
/// (platform unknown/unknown) never match.
fn pick_platform(entries: &[oci_client::manifest::ImageIndexEntry]) -> Option<String> {
    let mut candidates: Vec<_> = entries
        .iter()
        .filter(|e| {
            e.platform.as_ref().is_some_and(|p| {
                p.os.to_string() == OS && p.architecture.to_string() == ARCHITECTURE
            })
        })
        .collect();
    candidates.sort_by_key(|e| {
        e.platform
            .as_ref()
            .and_then(|p| p.variant.as_deref())
            .map_or(0, |v| if v == "v1" { 1 } else { 2 })
    });
    candidates.first().map(|e| e.digest.clone())
}

/// Turns oci-client's errors into ours, keeping the registry's own words.
fn classify(shown: &str, endpoint: &Endpoint, e: OciDistributionError) -> ImageError {
    let reference = shown.to_string();
    match e {
        OciDistributionError::RegistryError { envelope, .. } => {
            let message = envelope
                .errors
                .iter()
                .map(|e| {
                    if e.message.is_empty() {
                        format!("{:?}", e.code)
                    } else {
                        e.message.clone()
                    }
                })
                .collect::<Vec<_>>()
                .join("; ");
            let code = envelope.errors.first().map(|e| &e.code);
            match code {
                Some(
                    OciErrorCode::ManifestUnknown
                    | OciErrorCode::NameUnknown
                    | OciErrorCode::BlobUnknown
                    | OciErrorCode::NotFound,
                ) => ImageError::NotInRegistry { reference, message },
                Some(OciErrorCode::Unauthorized | OciErrorCode::Denied) => {
                    ImageError::Unauthorized { reference, message }
                }
                _ => ImageError::Registry { reference, message },
            }
        }
        OciDistributionError::UnauthorizedError { .. } => ImageError::Unauthorized {
            reference,
            message: format!("{} refused access", endpoint.host),
        },
        OciDistributionError::AuthenticationFailure(m) => ImageError::Unauthorized {
            reference,
            message: trim_body(&m),
        },
        OciDistributionError::ServerError { code, message, .. } => match code {
            401 | 403 => ImageError::Unauthorized {
                reference,
                message: format!("HTTP {code}: {}", trim_body(&message)),
            },
            404 => ImageError::NotInRegistry {
                reference,
                message: "not found".into(),
            },
            _ => ImageError::Registry {
                reference,
                message: format!(
                    "{} answered HTTP {code}: {}",
                    endpoint.host,
                    trim_body(&message)
                ),
            },
        },
        OciDistributionError::ImageManifestNotFoundError(m) => ImageError::NotInRegistry {
            reference,
            message: m,
        },
        OciDistributionError::RequestError(e) if e.is_connect() || e.is_timeout() => {
            ImageError::Unreachable {
                reference,
                message: format!("cannot reach {}: {}", endpoint.host, error_chain(&e)),
            }
        }
        OciDistributionError::RequestError(e) => ImageError::Registry {
            reference,
            message: format!("talking to {}: {}", endpoint.host, error_chain(&e)),
        },
        other => ImageError::Registry {
            reference,
            message: other.to_string(),
        },
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// HTML error pages are not messages.
fn trim_body(body: &str) -> String {
    let b = body.trim();
    if b.chars().count() > 200 {
        format!("{}…", b.chars().take(200).collect::<String>())
    } else {
        b.to_string()
    }
}

/// Docker's identity token is an OAuth2 refresh token: trade it for an
/// access token at the token service the registry's challenge names.
async fn exchange_identity_token(
    endpoint: &Endpoint,
    image: &ImageRef,
    token: &str,
    shown: &str,
) -> Result<RegistryAuth> {
    let fail = |message: String| ImageError::Unauthorized {
        reference: shown.to_string(),
        message,
    };
    let unreachable = |e: reqwest::Error| ImageError::Unreachable {
        reference: shown.to_string(),
        message: format!("cannot reach {}: {}", endpoint.host, error_chain(&e)),
    };
    let http = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let scheme = if endpoint.plain_http { "http" } else { "https" };
    let host = if endpoint.host == DEFAULT_REGISTRY {
        "index.docker.io"
    } else {
        endpoint.host.as_str()
    };
    let ping = http
        .get(format!("{scheme}://{host}/v2/"))
        .send()
        .await
        .map_err(unreachable)?;
    let challenge = ping
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|h| h.to_str().ok())
        .and_then(parse_bearer_challenge)
        .ok_or_else(|| {
            fail(format!(
                "{} does not offer token authentication, so an identity token cannot be used",
                endpoint.host
            ))
        })?;
    let scope = format!("repository:{}:pull", image.repository);
    let mut form = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", token),
        ("client_id", "podvisor"),
        ("scope", scope.as_str()),
    ];
    if let Some(service) = &challenge.service {
        form.push(("service", service));
    }
    let response = http
        .post(&challenge.realm)
        .form(&form)
        .send()
        .await
        .map_err(unreachable)?;
    let status = response.status();
    let body = response.text().await.map_err(unreachable)?;
    if !status.is_success() {
        return Err(fail(format!(
            "the token service refused the identity token (HTTP {status}): {}",
            trim_body(&body)
        )));
    }
    #[derive(Deserialize)]
    struct TokenResponse {
        access_token: Option<String>,
        token: Option<String>,
    }
    let parsed: TokenResponse = serde_json::from_str(&body)
        .map_err(|e| fail(format!("unreadable token service answer: {e}")))?;
    parsed
        .access_token
        .or(parsed.token)
        .map(RegistryAuth::Bearer)
        .ok_or_else(|| fail("the token service answered without a token".into()))
}

#[derive(Debug, PartialEq, Eq)]
struct BearerChallenge {
    realm: String,
    service: Option<String>,
}

/// `Bearer realm="https://auth/token",service="registry",scope="..."`.
fn parse_bearer_challenge(header: &str) -> Option<BearerChallenge> {
    let rest = header.trim();
    let (scheme, params) = rest.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut fields = BTreeMap::new();
    let mut chars = params.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars
            .by_ref()
            .take_while(|c| *c != '=')
            .collect::<String>()
            .trim()
            .to_ascii_lowercase();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek() {
                if *c == ',' {
                    break;
                }
                value.push(*c);
                chars.next();
            }
            value = value.trim().to_string();
        }
        fields.insert(key, value);
    }
    Some(BearerChallenge {
        realm: fields.remove("realm")?,
        service: fields.remove("service"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_try_mirrors_first() {
        let config = RegistryConfig {
            mirrors: BTreeMap::from([
                (
                    "docker.io".to_string(),
                    vec![
                        "https://mirror.gcr.io".to_string(),
                        "http://10.0.0.1:5000/v2/".to_string(),
                    ],
                ),
                ("*".to_string(), vec!["cache.local".to_string()]),
            ]),
            insecure: vec!["cache.local".to_string(), "reg.lan:5000".to_string()],
        };
        config.validate().unwrap();
        let e = config.endpoints("docker.io");
        assert_eq!(
            e.iter()
                .map(|e| (e.host.as_str(), e.plain_http, e.mirror))
                .collect::<Vec<_>>(),
            [
                ("mirror.gcr.io", false, true),
                ("10.0.0.1:5000", true, true),
                ("docker.io", false, false)
            ]
        );
        let e = config.endpoints("quay.io");
        assert_eq!(e[0].host, "cache.local");
        assert!(e[0].plain_http);
        assert!(!e[1].plain_http);
        assert!(config.endpoints("reg.lan:5000")[1].plain_http);
        assert!(!config.endpoints("reg.lan:5001")[1].plain_http);
    }

    #[test]
    fn loopback_registries_use_plain_http() {
        let config = RegistryConfig::default();
        for host in [
            "127.0.0.1:5000",
            "127.1.2.3",
            "localhost:5000",
            "[::1]:5000",
        ] {
            assert!(config.endpoints(host)[0].plain_http, "{host}");
        }
        for host in ["10.0.0.1:5000", "quay.io", "localhost.example.com"] {
            assert!(!config.endpoints(host)[0].plain_http, "{host}");
        }
    }

    #[test]
    fn bad_mirrors_are_refused() {
        for (url, why) in [
            ("ftp://x", "unknown scheme \"ftp\""),
            ("https://", "no host"),
            (
                "https://x/prefix/v2",
                "endpoints with a path are not supported",
            ),
        ] {
            let config = RegistryConfig {
                mirrors: BTreeMap::from([("docker.io".to_string(), vec![url.to_string()])]),
                ..Default::default()
            };
            let err = config.validate().unwrap_err();
            assert!(
                err.contains(&format!("mirror {url:?} of docker.io")) && err.contains(why),
                "{url}: {err}"
            );
        }
    }

    #[test]
    fn credentials() {
        let basic = |u: &str, p: &str| RegistryAuth::Basic(u.into(), p.into());
        let plain = |c: Credentials| match c.auth().unwrap() {
            Auth::Plain(a) => a,
            Auth::IdentityToken(_) => panic!("identity token"),
        };
        let c = Credentials {
            username: "u".into(),
            password: "p".into(),
            ..Default::default()
        };
        assert_eq!(plain(c), basic("u", "p"));
        let c = Credentials {
            auth: base64::engine::general_purpose::STANDARD.encode("alice:s3:cret"),
            ..Default::default()
        };
        assert_eq!(plain(c), basic("alice", "s3:cret"));
        let c = Credentials {
            registry_token: "tok".into(),
            username: "u".into(),
            ..Default::default()
        };
        assert_eq!(plain(c), RegistryAuth::Bearer("tok".into()));
        assert_eq!(plain(Credentials::default()), RegistryAuth::Anonymous);
        let c = Credentials {
            auth: "not base64!".into(),
            ..Default::default()
        };
        assert_eq!(c.auth().err().as_deref(), Some("auth is not valid base64"));
        let c = Credentials {
            identity_token: "refresh".into(),
            ..Default::default()
        };
        assert!(matches!(c.auth().unwrap(), Auth::IdentityToken(t) if t == "refresh"));
        let c = Credentials {
            password: "secret".into(),
            ..Default::default()
        };
        assert!(!format!("{c:?}").contains("secret"));
    }

    #[test]
    fn credentials_stay_with_their_registry() {
        let mut c = Credentials::default();
        assert!(c.applies_to("docker.io", "docker.io"));
        assert!(!c.applies_to("docker.io", "mirror.gcr.io"));
        c.server_address = "https://index.docker.io/v1/".into();
        assert!(c.applies_to("docker.io", "docker.io"));
        assert!(!c.applies_to("docker.io", "mirror.gcr.io"));
        c.server_address = "mirror.gcr.io".into();
        assert!(c.applies_to("docker.io", "mirror.gcr.io"));
        assert!(!c.applies_to("docker.io", "docker.io"));
    }

    #[test]
    fn bearer_challenges() {
        assert_eq!(
            parse_bearer_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:a:pull,push""#
            ),
            Some(BearerChallenge {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
            })
        );
        assert_eq!(
            parse_bearer_challenge("bearer realm=http://127.0.0.1:1/t"),
            Some(BearerChallenge {
                realm: "http://127.0.0.1:1/t".into(),
                service: None,
            })
        );
        assert_eq!(parse_bearer_challenge(r#"Basic realm="x""#), None);
    }
}
