//! The one HTTP/1.1 client of the binary, for probes, scrapes and webhooks: hyper over a TCP or
//! rustls stream that the caller holds itself, so that a probe can read the server's certificate
//! (expiry) and time the whole exchange.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, pki_types::ServerName};

/// A parsed `http://` or `https://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub tls: bool,
    /// Host as written, without brackets for IPv6.
    pub host: String,
    pub port: u16,
    /// Path and query, at least `/`.
    pub path: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Self> {
        let (tls, rest) = crate::netaddr::scheme(url, "http")?;
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_string()
        };
        let (host, port) = crate::netaddr::host_port(url, authority, if tls { 443 } else { 80 })?;
        Ok(Target {
            tls,
            host,
            port,
            path,
        })
    }

    fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match (self.tls, self.port) {
            (false, 80) | (true, 443) => host,
            (_, port) => format!("{host}:{port}"),
        }
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Bytes,
    /// The server certificate's `notAfter`, seconds since the epoch (TLS only).
    pub certificate_expiry: Option<i64>,
}

/// GETs `target`, reading at most `max_body` bytes of body, all within `timeout`.
pub async fn get(
    target: &Target,
    timeout: Duration,
    insecure: bool,
    max_body: usize,
) -> Result<Response> {
    let accept = [(
        "accept".to_string(),
        "text/plain;version=0.0.4;q=1,*/*;q=0.1".to_string(),
    )];
    let request = Request {
        method: "GET",
        headers: &accept,
        body: Bytes::new(),
    };
    tokio::time::timeout(
        timeout,
        send_inner(target, request, tls_config(insecure), max_body),
    )
    .await
    .map_err(|_| anyhow::anyhow!("timed out after {timeout:?}"))?
}

/// What [`send`] sends.
pub struct Request<'a> {
    pub method: &'static str,
    pub headers: &'a [(String, String)],
    pub body: Bytes,
}

/// Sends `request` to `target`, reading at most `max_body` bytes of the answer, all within
/// `timeout` (webhooks POST through this). `tls` decides which servers are trusted for an
/// `https://` target.
pub async fn send(
    target: &Target,
    request: Request<'_>,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
    max_body: usize,
) -> Result<Response> {
    tokio::time::timeout(timeout, send_inner(target, request, tls, max_body))
        .await
        .map_err(|_| anyhow::anyhow!("timed out after {timeout:?}"))?
}

async fn send_inner(
    target: &Target,
    request: Request<'_>,
    tls: Arc<rustls::ClientConfig>,
    max_body: usize,
) -> Result<Response> {
    let tcp = connect_tcp(target).await?;
    let request = build_request(target, request)?;
    if target.tls {
        let stream = connect_tls(target, tls, tcp).await?;
        let certificate_expiry = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|der| x509_parser::parse_x509_certificate(der).ok())
            .map(|(_, cert)| cert.validity().not_after.timestamp());
        let (status, body) = exchange(stream, request, max_body).await?;
        Ok(Response {
            status,
            body,
            certificate_expiry,
        })
    } else {
        let (status, body) = exchange(tcp, request, max_body).await?;
        Ok(Response {
            status,
            body,
            certificate_expiry: None,
        })
    }
}

async fn connect_tcp(target: &Target) -> Result<TcpStream> {
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .with_context(|| format!("connect to {}:{}", target.host, target.port))?;
    tcp.set_nodelay(true).ok();
    Ok(tcp)
}

async fn connect_tls(
    target: &Target,
    tls: Arc<rustls::ClientConfig>,
    tcp: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let name = ServerName::try_from(target.host.clone())
        .with_context(|| format!("{:?} is not a valid TLS server name", target.host))?;
    tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .context("TLS handshake")
}

fn build_request(target: &Target, request: Request<'_>) -> Result<hyper::Request<Full<Bytes>>> {
    let mut builder = hyper::Request::builder()
        .method(request.method)
        .uri(&target.path)
        .header(hyper::header::HOST, target.authority())
        .header(
            hyper::header::USER_AGENT,
            concat!("outpost/", env!("CARGO_PKG_VERSION")),
        );
    for (name, value) in request.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    builder
        .body(Full::new(request.body))
        .context("building the request")
}

/// The status and at most `max_body` bytes of the body.
async fn read_answer(
    response: hyper::Response<hyper::body::Incoming>,
    max_body: usize,
) -> Result<(u16, Bytes)> {
    let status = response.status().as_u16();
    let body = Limited::new(response.into_body(), max_body)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading the body: {e}"))?
        .to_bytes();
    Ok((status, body))
}

/// One connection kept open across requests to the same target (HTTP/1.1 keep-alive), opened
/// again after any failure: what a client that sends many requests to one server (the hub's
/// remote storage) uses, so that each request does not pay for a TCP and TLS handshake.
pub struct KeptAlive {
    target: Target,
    tls: Arc<rustls::ClientConfig>,
    sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
}

impl KeptAlive {
    pub fn new(target: Target, tls: Arc<rustls::ClientConfig>) -> KeptAlive {
        KeptAlive {
            target,
            tls,
            sender: None,
        }
    }

    /// Sends `request`, reading at most `max_body` bytes of the answer, all within `timeout`.
    pub async fn send(
        &mut self,
        request: Request<'_>,
        timeout: Duration,
        max_body: usize,
    ) -> Result<(u16, Bytes)> {
        let sent = tokio::time::timeout(timeout, self.send_inner(request, max_body)).await;
        let answer = match sent {
            Ok(answer) => answer,
            Err(_) => Err(anyhow::anyhow!("timed out after {timeout:?}")),
        };
        if answer.is_err() {
            // The connection's state is unknown after a failure: the next request opens anew.
            self.sender = None;
        }
        answer
    }

    async fn send_inner(&mut self, request: Request<'_>, max_body: usize) -> Result<(u16, Bytes)> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            self.sender = Some(self.connect().await?);
        }
        let built = build_request(&self.target, request)?;
        let sender = self.sender.as_mut().expect("connected above");
        sender.ready().await.context("HTTP connection")?;
        let response = sender.send_request(built).await.context("HTTP request")?;
        read_answer(response, max_body).await
    }

    async fn connect(&self) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
        let tcp = connect_tcp(&self.target).await?;
        if self.target.tls {
            handshake(connect_tls(&self.target, self.tls.clone(), tcp).await?).await
        } else {
            handshake(tcp).await
        }
    }
}

/// An HTTP/1.1 connection over `stream`, its driver running as a task of its own (it ends when
/// the sender is dropped or the server closes).
async fn handshake<S>(stream: S) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP handshake")?;
    tokio::spawn(connection);
    Ok(sender)
}

async fn exchange<S>(
    stream: S,
    request: hyper::Request<Full<Bytes>>,
    max_body: usize,
) -> Result<(u16, Bytes)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP handshake")?;
    let driver = tokio::spawn(connection);
    let response = sender.send_request(request).await.context("HTTP request")?;
    let answer = read_answer(response, max_body).await;
    driver.abort();
    answer
}

fn tls_config(insecure: bool) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions");
    let config = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Arc::new(config)
}

/// For `insecure = true` probes: any certificate is accepted, signatures are still checked so
/// the handshake is a real one.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let t = Target::parse("http://127.0.0.1:9100/metrics?x=1").unwrap();
        assert_eq!(
            (t.tls, t.host.as_str(), t.port, t.path.as_str()),
            (false, "127.0.0.1", 9100, "/metrics?x=1")
        );
        let t = Target::parse("https://example.net").unwrap();
        assert_eq!(
            (t.port, t.path.as_str(), t.authority().as_str()),
            (443, "/", "example.net")
        );
        let t = Target::parse("https://[::1]/hook").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("::1", 443, "/hook")
        );
        let t = Target::parse("http://[::1]:8080/").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.authority().as_str()),
            ("::1", 8080, "[::1]:8080")
        );
        for bad in [
            "ftp://x",
            "http://",
            "http://x:port/",
            "http://u:p@x/",
            "http://[::1/",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
