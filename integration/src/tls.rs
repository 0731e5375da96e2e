//! TLS for the end-to-end tests: a certificate authority and certificates made with rcgen
//! (valid, expired, for another name, for clients), and a TLS node: hyper's HTTP/1.1 server
//! over tokio-rustls on loopback, answering every request with its label, optionally
//! requiring a client certificate.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::h2node::Seen;

/// A certificate and its key, as PEM text.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The certificate.
    pub cert: String,
    /// Its private key.
    pub key: String,
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// A node's certificate, valid now.
    Server,
    /// A node's certificate that expired.
    ExpiredServer,
    /// A client's certificate (mTLS).
    Client,
}

/// A test certificate authority, whose files live in a temporary folder of its own.
pub struct TestCa {
    key: KeyPair,
    cert: rcgen::Certificate,
    dir: PathBuf,
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("CA certificate");
        let dir = std::env::temp_dir().join(format!(
            "outrigger-tls-{}-{}",
            std::process::id(),
            crate::free_port()
        ));
        std::fs::create_dir_all(&dir).expect("temp folder");
        TestCa { key, cert, dir }
    }

    /// The CA certificate as PEM.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate for `names` (DNS names or IP addresses), signed by this CA.
    pub fn issue(&self, names: &[&str], usage: Use) -> Identity {
        let key = KeyPair::generate().expect("key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, "outrigger test");
        params.extended_key_usages = vec![match usage {
            Use::Client => ExtendedKeyUsagePurpose::ClientAuth,
            _ => ExtendedKeyUsagePurpose::ServerAuth,
        }];
        if usage == Use::ExpiredServer {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("signed certificate");
        Identity {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// Writes `text` to `name` in the CA's folder; its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, text).expect("write test file");
        path
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A node that speaks HTTP/1.1 over TLS; stops when dropped.
pub struct TlsNode {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Requests answered.
    pub hits: Arc<AtomicUsize>,
    seen: Arc<std::sync::Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl TlsNode {
    /// Starts a node presenting `identity`, answering `label`; with `client_ca` (PEM), it
    /// requires a client certificate signed by that CA. It agrees to `http/1.1` by ALPN.
    pub async fn start(label: &str, identity: &Identity, client_ca: Option<&str>) -> TlsNode {
        Self::start_with_alpn(label, identity, client_ca, &[b"http/1.1"]).await
    }

    /// Like [`TlsNode::start`], agreeing to the first of `alpn` the client offers (none:
    /// ALPN ignored, as Python's ssl or an old server does); it serves HTTP/1.1 and HTTP/2
    /// (told apart by the client's first bytes) whatever ALPN settled.
    pub async fn start_with_alpn(
        label: &str,
        identity: &Identity,
        client_ca: Option<&str>,
        alpn: &[&[u8]],
    ) -> TlsNode {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(identity.cert.as_bytes())
                .collect::<Result<_, _>>()
                .expect("certificate PEM");
        let key = PrivateKeyDer::from_pem_slice(identity.key.as_bytes()).expect("key PEM");
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("protocol versions");
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                    roots.add(cert.expect("CA PEM")).expect("CA certificate");
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .expect("client verifier");
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .expect("server identity");
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let label: Arc<str> = label.into();
        let counter = hits.clone();
        let seen: Arc<std::sync::Mutex<Vec<Seen>>> = Arc::default();
        let record = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let label = label.clone();
                let counter = counter.clone();
                let record = record.clone();
                tokio::spawn(async move {
                    let Ok(session) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        record.lock().unwrap().push(Seen::of(&req));
                        let body = Full::new(Bytes::from(label.to_string()));
                        async move { Ok::<_, Infallible>(hyper::Response::new(body)) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(TokioIo::new(session), service)
                    .await;
                });
            }
        });
        TlsNode {
            addr,
            hits,
            seen,
            task,
        }
    }

    /// The requests it has answered.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for TlsNode {
    fn drop(&mut self) {
        self.task.abort();
    }
}
