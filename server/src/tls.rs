//! TLS for the gRPC and HTTP listeners (rustls, ring): the certificate and
//! key are re-read when their files change, so a rotated certificate is
//! served without a restart; with a client CA, clients must present a
//! certificate it signed (mutual TLS) and its SANs travel with each
//! request ([`PeerInfo`]) for authentication.
//!
//! [`accept`] turns a TCP listener into a channel of finished handshakes, so
//! a slow or hostile handshake never holds up the accept loop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsSettings;

/// A handshake that takes longer than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is on the other end of a connection: put in each request's
/// extensions (gRPC: through tonic's `Connected`).
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote: Option<SocketAddr>,
    /// DNS and URI SANs of the verified client certificate (empty without mTLS).
    pub sans: Arc<Vec<String>>,
}

/// The certificate in force, re-read when its files change.
#[derive(Debug)]
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    stamp: (Option<SystemTime>, Option<SystemTime>),
    key: Arc<CertifiedKey>,
}

fn mtime(path: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl ReloadingCert {
    pub fn load(cert: PathBuf, key: PathBuf) -> anyhow::Result<Arc<ReloadingCert>> {
        let loaded = Self::read(&cert, &key)?;
        Ok(Arc::new(ReloadingCert { cert, key, current: ArcSwap::from_pointee(loaded) }))
    }

    fn read(cert: &PathBuf, key: &PathBuf) -> anyhow::Result<Loaded> {
        let stamp = (mtime(cert), mtime(key));
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .with_context(|| format!("tls.cert {}", cert.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("tls.cert {}", cert.display()))?;
        anyhow::ensure!(!chain.is_empty(), "tls.cert {}: no certificate", cert.display());
        let der = PrivateKeyDer::from_pem_file(key).with_context(|| format!("tls.key {}", key.display()))?;
        let provider = rustls::crypto::ring::default_provider();
        let certified = CertifiedKey::from_der(chain, der, &provider).with_context(|| {
            format!("tls.key {} does not match tls.cert {}", key.display(), cert.display())
        })?;
        Ok(Loaded { stamp, key: Arc::new(certified) })
    }

    /// Re-reads the files if either changed since the last load. A broken
    /// new pair (half-written, mismatched) keeps the old one in force.
    pub fn refresh(&self) -> bool {
        let stamp = (mtime(&self.cert), mtime(&self.key));
        if stamp == self.current.load().stamp {
            return false;
        }
        match Self::read(&self.cert, &self.key) {
            Ok(loaded) => {
                self.current.store(Arc::new(loaded));
                tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                crate::metrics::tls_reloaded(true);
                true
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "TLS certificate change not loaded; the previous one stays");
                crate::metrics::tls_reloaded(false);
                false
            }
        }
    }

    /// Checks the files every `interval` until the process ends.
    pub fn watch(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(me) = me.upgrade() else { return };
                tokio::task::spawn_blocking(move || me.refresh()).await.ok();
            }
        })
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().key.clone())
    }
}

/// Server configs for the two listeners (gRPC speaks h2 only; the HTTP
/// side h2 and HTTP/1.1), sharing one reloading certificate.
pub struct Acceptors {
    pub grpc: TlsAcceptor,
    pub http: TlsAcceptor,
    pub cert: Arc<ReloadingCert>,
}

pub fn acceptors(settings: &TlsSettings) -> anyhow::Result<Option<Acceptors>> {
    let (Some(cert), Some(key)) = (&settings.cert, &settings.key) else { return Ok(None) };
    let resolver = ReloadingCert::load(cert.clone(), key.clone())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = |alpn: &[&[u8]]| -> anyhow::Result<TlsAcceptor> {
        let builder =
            ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
        let builder = match &settings.client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_file_iter(ca)
                    .with_context(|| format!("tls.client_ca {}", ca.display()))?
                {
                    roots.add(c.with_context(|| format!("tls.client_ca {}", ca.display()))?)?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .context("tls.client_ca")?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(resolver.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(TlsAcceptor::from(Arc::new(config)))
    };
    Ok(Some(Acceptors { grpc: config(&[b"h2"])?, http: config(&[b"h2", b"http/1.1"])?, cert: resolver }))
}

/// The TLS client for `rediss://` when a CA or client certificate is
/// configured (None: fred's default, the system's roots).
pub fn redis_client(
    settings: &crate::config::RedisSettings,
) -> anyhow::Result<Option<Arc<rustls::ClientConfig>>> {
    if settings.tls_ca.is_none() && settings.tls_cert.is_none() {
        return Ok(None);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = &settings.tls_ca {
        for c in
            CertificateDer::pem_file_iter(ca).with_context(|| format!("redis.tls_ca {}", ca.display()))?
        {
            roots.add(c.with_context(|| format!("redis.tls_ca {}", ca.display()))?)?;
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match (&settings.tls_cert, &settings.tls_key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .with_context(|| format!("redis.tls_cert {}", cert.display()))?
                .collect::<Result<Vec<_>, _>>()?;
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("redis.tls_key {}", key.display()))?;
            builder.with_client_auth_cert(chain, key).context("redis.tls_cert / tls_key")?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Some(Arc::new(config)))
}

/// A TLS connection and who is on the other end.
pub struct TlsConn {
    inner: TlsStream<TcpStream>,
    pub peer: PeerInfo,
}

/// Accepts TCP connections on `listener` and completes their handshakes
/// concurrently; finished ones arrive on the returned channel.
pub fn accept(listener: TcpListener, acceptor: TlsAcceptor) -> mpsc::Receiver<TlsConn> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off a little.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if tx.is_closed() {
                return;
            }
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(inner)) => {
                        let sans = inner
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .map(|c| crate::auth::certificate_sans(c))
                            .unwrap_or_default();
                        let peer = PeerInfo { remote: Some(remote), sans: Arc::new(sans) };
                        let _ = tx.send(TlsConn { inner, peer }).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                }
            });
        }
    });
    rx
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}

/// The HTTP side's listener over TLS (axum).
pub struct HttpsListener {
    pub rx: mpsc::Receiver<TlsConn>,
    pub local: SocketAddr,
}

impl axum::serve::Listener for HttpsListener {
    type Io = TlsConn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TlsConn, SocketAddr) {
        match self.rx.recv().await {
            Some(conn) => {
                let addr = conn.peer.remote.unwrap_or(self.local);
                (conn, addr)
            }
            // The accept loop ended (it never does while the listener lives).
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &std::path::Path, name: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.into()]).unwrap().self_signed(&key).unwrap();
        let (c, k) = (dir.join("tls.crt"), dir.join("tls.key"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    #[test]
    fn a_changed_certificate_is_reloaded_and_a_broken_one_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = write_pair(dir.path(), "one.test");
        let r = ReloadingCert::load(c.clone(), k.clone()).unwrap();
        let first = r.current.load().key.cert[0].clone();
        assert!(!r.refresh(), "unchanged files are not re-read");
        std::thread::sleep(Duration::from_millis(20));
        write_pair(dir.path(), "two.test");
        // Filesystems with coarse mtimes: make sure the stamp moves.
        let later = SystemTime::now() + Duration::from_secs(2);
        std::fs::File::options().write(true).open(&c).unwrap().set_modified(later).unwrap();
        assert!(r.refresh());
        let second = r.current.load().key.cert[0].clone();
        assert_ne!(first, second);
        std::fs::write(&k, "garbage").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&k)
            .unwrap()
            .set_modified(later + Duration::from_secs(2))
            .unwrap();
        assert!(!r.refresh(), "a broken key keeps the old pair");
        assert_eq!(r.current.load().key.cert[0], second);
    }
}
