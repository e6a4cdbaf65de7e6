//! HTTP/1.1 in front of the streaming protocols: token check, protocol
//! negotiation, the 101 answer, then the upgraded connection goes to the
//! SPDY or WebSocket side. hyper does HTTP and the upgrade; rustls TLS.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, CONNECTION, UPGRADE};
use hyper::{Method, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use super::{exec_spdy, exec_ws, portforward, remotecommand, Request, StreamingError};
use super::{StreamingConfig, StreamingServer};
use crate::sandbox::SandboxState;

const SPDY: &str = "SPDY/3.1";
const STREAM_PROTOCOL: &str = "X-Stream-Protocol-Version";
const WS_PROTOCOL: &str = "Sec-WebSocket-Protocol";
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

type Answer = Response<Full<Bytes>>;

pub fn tls_acceptor(config: &StreamingConfig) -> Result<Option<TlsAcceptor>, StreamingError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let (cert, key) = match (&config.tls_cert, &config.tls_key) {
        (None, None) => return Ok(None),
        (Some(c), Some(k)) => (c, k),
        _ => {
            return Err(StreamingError::Tls(
                "tls_cert and tls_key go together".into(),
            ))
        }
    };
    let tls = |what: &str, e: &dyn std::fmt::Display| StreamingError::Tls(format!("{what}: {e}"));
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| tls(&cert.display().to_string(), &e))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| tls(&key.display().to_string(), &e))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls("protocol versions", &e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| tls("certificate", &e))?;
    Ok(Some(TlsAcceptor::from(Arc::new(server))))
}

pub async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    server: Arc<StreamingServer>,
) {
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors and the like: back off, keep serving.
                tracing::warn!(%e, "accepting a streaming connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let server = server.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(socket, server).await,
                Some(acceptor) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await
                    {
                        Ok(Ok(stream)) => serve_connection(stream, server).await,
                        Ok(Err(e)) => tracing::debug!(%peer, %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

async fn serve_connection<IO>(io: IO, server: Arc<StreamingServer>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let server = server.clone();
        async move { Ok::<_, Infallible>(handle(server, req).await) }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades()
        .await
    {
        tracing::debug!(%e, "streaming connection ended");
    }
}

fn plain(status: StatusCode, text: impl Into<String>) -> Answer {
    let mut r = Response::new(Full::new(Bytes::from(text.into() + "\n")));
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("text/plain"));
    r
}

/// Every value of a header that may repeat and hold comma-separated lists.
fn list(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

fn header_has(headers: &HeaderMap, name: hyper::header::HeaderName, word: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().eq_ignore_ascii_case(word))
}

/// The first protocol the client offers that we speak; `Ok(None)` when it
/// offers none.
fn negotiate(offered: &[String], ours: &[&str]) -> Result<Option<String>, String> {
    if offered.is_empty() {
        return Ok(None);
    }
    offered
        .iter()
        .find(|p| ours.contains(&p.as_str()))
        .map(|p| Some(p.clone()))
        .ok_or_else(|| {
            format!(
                "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server supports {ours:?}"
            )
        })
}

fn switching(upgrade: &'static str) -> Answer {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    r.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    r.headers_mut()
        .insert(UPGRADE, HeaderValue::from_static(upgrade));
    r
}

async fn handle(server: Arc<StreamingServer>, mut req: hyper::Request<Incoming>) -> Answer {
    if req.method() != Method::GET && req.method() != Method::POST {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and POST");
    }
    let path = req.uri().path().trim_start_matches('/').to_string();
    let Some((kind, token)) = path.split_once('/') else {
        return plain(StatusCode::NOT_FOUND, "not found");
    };
    let request = match server.tokens.consume(token) {
        Some(r) if r.path() == kind => r,
        // Unknown, used, expired, or issued for another call.
        _ => return plain(StatusCode::NOT_FOUND, "unknown or expired streaming token"),
    };
    let websocket = header_has(req.headers(), UPGRADE, "websocket");
    let spdy = header_has(req.headers(), UPGRADE, SPDY);
    match request {
        Request::PortForward { sandbox_id } => {
            if !spdy {
                return plain(
                    StatusCode::BAD_REQUEST,
                    "port forwarding needs an upgrade to SPDY/3.1",
                );
            }
            let protocol = match negotiate(
                &list(req.headers(), STREAM_PROTOCOL),
                &[portforward::PROTOCOL],
            ) {
                Ok(p) => p,
                Err(e) => return plain(StatusCode::FORBIDDEN, e),
            };
            let pod = match server.sandboxes.get(&sandbox_id) {
                Ok(pod) if pod.record().state == SandboxState::Ready => pod,
                Ok(_) => {
                    return plain(
                        StatusCode::CONFLICT,
                        format!("pod sandbox {sandbox_id} is not ready"),
                    )
                }
                Err(e) => return plain(StatusCode::NOT_FOUND, e.to_string()),
            };
            let agent = match pod.agent().await {
                Ok(a) => a,
                Err(e) => return plain(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            };
            if let Err(refusal) = agent_speaks_v3(&agent, "port forwarding").await {
                return refusal;
            }
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                match on_upgrade.await {
                    Ok(up) => portforward::serve(TokioIo::new(up), sandbox_id, agent).await,
                    Err(e) => tracing::debug!(%e, "port-forward upgrade failed"),
                }
            });
            let mut r = switching(SPDY);
            if let Some(p) = protocol {
                r.headers_mut().insert(STREAM_PROTOCOL, header_value(&p));
            }
            r
        }
        Request::Exec {
            ref container_id, ..
        }
        | Request::Attach {
            ref container_id, ..
        } => {
            let (record, agent) = match server.containers.running_with_agent(container_id).await {
                Ok(v) => v,
                Err(e) => return plain(StatusCode::CONFLICT, e.to_string()),
            };
            if matches!(request, Request::Attach { .. }) {
                if let Err(refusal) = agent_speaks_v3(&agent, "attach").await {
                    return refusal;
                }
            }
            let (opts, cmd) = match &request {
                Request::Exec { cmd, opts, .. } => (*opts, Some(cmd.clone())),
                Request::Attach { opts, .. } => (*opts, None),
                Request::PortForward { .. } => return plain(StatusCode::NOT_FOUND, "not found"),
            };
            let run = move |io: remotecommand::ClientIo| async move {
                match cmd {
                    Some(cmd) => remotecommand::exec(agent, &record, cmd, opts, io).await,
                    None => remotecommand::attach(agent, &record, opts, io).await,
                }
            };
            if websocket {
                let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
                    return plain(StatusCode::BAD_REQUEST, "Sec-WebSocket-Key is missing");
                };
                let protocol =
                    match negotiate(&list(req.headers(), WS_PROTOCOL), exec_ws::PROTOCOLS) {
                        Ok(p) => p,
                        Err(e) => return plain(StatusCode::FORBIDDEN, e),
                    };
                let dialect = exec_ws::Dialect::of(protocol.as_deref().unwrap_or(""));
                let Some(dialect) = dialect else {
                    return plain(StatusCode::FORBIDDEN, "unsupported WebSocket protocol");
                };
                let on_upgrade = hyper::upgrade::on(&mut req);
                tokio::spawn(async move {
                    match on_upgrade.await {
                        Ok(up) => {
                            let ws = WebSocketStream::from_raw_socket(
                                TokioIo::new(up),
                                Role::Server,
                                None,
                            )
                            .await;
                            exec_ws::serve(ws, dialect, opts, run).await;
                        }
                        Err(e) => tracing::debug!(%e, "WebSocket upgrade failed"),
                    }
                });
                let mut r = switching("websocket");
                r.headers_mut().insert(
                    "Sec-WebSocket-Accept",
                    header_value(&derive_accept_key(key.as_bytes())),
                );
                if let Some(p) = protocol {
                    r.headers_mut().insert(WS_PROTOCOL, header_value(&p));
                }
                r
            } else if spdy {
                let protocol =
                    match negotiate(&list(req.headers(), STREAM_PROTOCOL), exec_spdy::PROTOCOLS) {
                        Ok(p) => p,
                        Err(e) => return plain(StatusCode::FORBIDDEN, e),
                    };
                let Some(version) = exec_spdy::Version::of(protocol.as_deref().unwrap_or(""))
                else {
                    return plain(StatusCode::FORBIDDEN, "unsupported stream protocol");
                };
                let on_upgrade = hyper::upgrade::on(&mut req);
                tokio::spawn(async move {
                    match on_upgrade.await {
                        Ok(up) => exec_spdy::serve(TokioIo::new(up), version, opts, run).await,
                        Err(e) => tracing::debug!(%e, "SPDY upgrade failed"),
                    }
                });
                let mut r = switching(SPDY);
                if let Some(p) = protocol {
                    r.headers_mut().insert(STREAM_PROTOCOL, header_value(&p));
                }
                r
            } else {
                plain(
                    StatusCode::BAD_REQUEST,
                    "upgrade to SPDY/3.1 or websocket required",
                )
            }
        }
    }
}

/// Attach (live output) and PortForward came with agent protocol 3; an
/// older guest image gets a clear refusal instead of replayed output or an
/// unknown method.
async fn agent_speaks_v3(agent: &crate::agent_client::Agent, what: &str) -> Result<(), Answer> {
    let mut agent = agent.clone();
    match agent.health(podvisor_proto::HealthRequest {}).await {
        Ok(h) if h.get_ref().protocol_version >= 3 => Ok(()),
        Ok(h) => Err(plain(
            StatusCode::NOT_IMPLEMENTED,
            format!(
                "{what} needs agent protocol 3; this pod's agent speaks {} (rebuild the guest image)",
                h.get_ref().protocol_version
            ),
        )),
        Err(s) => Err(plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("asking the pod's agent: {}", s.message()),
        )),
    }
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_follows_the_client_and_refuses_strangers() {
        let offered = vec!["v5.channel.k8s.io".to_string(), "v4.channel.k8s.io".into()];
        assert_eq!(
            negotiate(&offered, exec_spdy::PROTOCOLS),
            Ok(Some("v4.channel.k8s.io".into()))
        );
        assert_eq!(
            negotiate(&offered, exec_ws::PROTOCOLS),
            Ok(Some("v5.channel.k8s.io".into()))
        );
        assert_eq!(negotiate(&[], exec_spdy::PROTOCOLS), Ok(None));
        let err = negotiate(&["nope".into()], exec_spdy::PROTOCOLS).unwrap_err();
        assert!(
            err.contains("unable to negotiate protocol") && err.contains("\"nope\""),
            "{err}"
        );
    }

    #[test]
    fn repeated_and_comma_separated_headers_are_one_list() {
        let mut h = HeaderMap::new();
        h.append(
            STREAM_PROTOCOL,
            HeaderValue::from_static("v4.channel.k8s.io"),
        );
        h.append(
            STREAM_PROTOCOL,
            HeaderValue::from_static("v3.channel.k8s.io, channel.k8s.io"),
        );
        assert_eq!(
            list(&h, STREAM_PROTOCOL),
            vec!["v4.channel.k8s.io", "v3.channel.k8s.io", "channel.k8s.io"]
        );
    }
}
