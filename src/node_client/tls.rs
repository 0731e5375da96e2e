//! TLS toward a service's nodes: one rustls client configuration per service, built at start
//! from `OUTRIGGER_UPSTREAM_TLS_*`, and why a handshake failed, in words an operator can act
//! on.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{AlertDescription, CertificateError, ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// A service's TLS settings as configured: whether, and the files and name to use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// Connections to the nodes use TLS (`OUTRIGGER_UPSTREAM_TLS=on`).
    pub enabled: bool,
    /// A PEM file of the CA certificates to trust (`OUTRIGGER_UPSTREAM_TLS_CA`); `None`: the
    /// system's root certificates.
    pub ca: Option<PathBuf>,
    /// A PEM file with the client certificate chain, for nodes that require one (mTLS)
    /// (`OUTRIGGER_UPSTREAM_TLS_CERT`).
    pub cert: Option<PathBuf>,
    /// A PEM file with the client certificate's private key (`OUTRIGGER_UPSTREAM_TLS_KEY`).
    pub key: Option<PathBuf>,
    /// The name the node's certificate must be valid for, sent as SNI
    /// (`OUTRIGGER_UPSTREAM_TLS_SERVER_NAME`); `None`: the node's IP address.
    pub server_name: Option<String>,
    /// The HTTP versions offered by ALPN follow it (`OUTRIGGER_UPSTREAM_PROTOCOL`).
    pub protocol: super::UpstreamProtocol,
}

/// Why TLS settings cannot be used; each names the file or value at fault.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TlsConfigError {
    /// A file could not be read or holds no usable PEM item.
    #[error("{path}: {detail}")]
    File {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// A client certificate without its key, or a key without its certificate.
    #[error("a client certificate needs both OUTRIGGER_UPSTREAM_TLS_CERT and OUTRIGGER_UPSTREAM_TLS_KEY")]
    HalfIdentity,
    /// The server name is neither a DNS name nor an IP address.
    #[error("{0:?} is not a DNS name or an IP address")]
    ServerName(String),
    /// No CA file was given and the system has no root certificates.
    #[error("no system root certificates could be loaded ({0}); set OUTRIGGER_UPSTREAM_TLS_CA")]
    NoRoots(String),
    /// rustls refused the certificate and key.
    #[error("the client certificate and key do not go together: {0}")]
    Identity(rustls::Error),
}

/// Opens TLS sessions to one service's nodes.
pub struct NodeTls {
    settings: TlsSettings,
    /// Swapped whole when the files change ([`NodeTls::reload`]); sessions already open keep
    /// the configuration they were made with.
    connector: ArcSwap<TlsConnector>,
    /// A hash of the files' contents the connector was made from.
    files_hash: AtomicU64,
    server_name: Option<ServerName<'static>>,
    /// Tells this service's idle connections apart from plaintext ones and from other
    /// services' (another name or certificate) to the same address.
    pool_id: u32,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTls")
            .field("settings", &self.settings)
            .finish()
    }
}

impl PartialEq for NodeTls {
    fn eq(&self, other: &Self) -> bool {
        self.settings == other.settings
    }
}

static NEXT_POOL_ID: AtomicU32 = AtomicU32::new(1);

impl NodeTls {
    /// The TLS client for `settings`, or `None` when TLS is off. Reads the files now.
    ///
    /// Errors: [`TlsConfigError`] naming the file or value that cannot be used.
    pub fn new(settings: &TlsSettings) -> Result<Option<Self>, TlsConfigError> {
        if !settings.enabled {
            return Ok(None);
        }
        let files_hash = files_hash(settings)?;
        let connector = connector_for(settings)?;
        let server_name = settings
            .server_name
            .as_ref()
            .map(|n| {
                ServerName::try_from(n.clone()).map_err(|_| TlsConfigError::ServerName(n.clone()))
            })
            .transpose()?;
        Ok(Some(NodeTls {
            settings: settings.clone(),
            connector: ArcSwap::from_pointee(connector),
            files_hash: AtomicU64::new(files_hash),
            server_name,
            pool_id: NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed),
        }))
    }

    /// Reads the files again and, when their contents changed, makes new sessions use them:
    /// certificates rotated on disk (cert-manager, Vault) take effect without a restart, and
    /// sessions already open carry on. Returns whether anything changed.
    ///
    /// Errors: [`TlsConfigError`] when the changed files cannot be used (half-written, a key
    /// that does not match); the configuration in use stays.
    pub fn reload(&self) -> Result<bool, TlsConfigError> {
        let hash = files_hash(&self.settings)?;
        if hash == self.files_hash.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let connector = connector_for(&self.settings)?;
        self.connector.store(Arc::new(connector));
        self.files_hash.store(hash, Ordering::Relaxed);
        Ok(true)
    }

    /// The files this service's TLS reads, for logs.
    pub fn files(&self) -> Vec<&Path> {
        [&self.settings.ca, &self.settings.cert, &self.settings.key]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path)
            .collect()
    }

    /// Tells idle connections of this service's TLS settings apart from others (never 0,
    /// which plaintext connections use).
    pub fn pool_id(&self) -> u32 {
        self.pool_id
    }

    /// A TLS session over `tcp` to the node at `addr`, whose certificate must be valid for
    /// the configured server name, else `host_name` (the registry's name for the node), else
    /// the address.
    ///
    /// Errors: [`TlsFailure`] with the reason in words (certificate not trusted, not valid
    /// for the name, expired, a client certificate required, ...).
    pub async fn handshake(
        &self,
        addr: SocketAddr,
        host_name: Option<&str>,
        tcp: TcpStream,
    ) -> Result<TlsStream<TcpStream>, TlsFailure> {
        let name = match (&self.server_name, host_name) {
            (Some(name), _) => name.clone(),
            (None, Some(host)) => {
                ServerName::try_from(host.to_owned()).map_err(|_| TlsFailure {
                    addr,
                    reason: format!("the registry's host name {host:?} is not a DNS name"),
                })?
            }
            (None, None) => ServerName::IpAddress(addr.ip().into()),
        };
        self.connector
            .load()
            .connect(name.clone(), tcp)
            .await
            .map_err(|e| TlsFailure {
                addr,
                reason: reason(&e, &name),
            })
    }
}

/// Every reason `settings` (taken as enabled) cannot be used, each file checked on its own,
/// so that a bad CA file does not hide a bad key; empty when [`NodeTls::new`] would succeed.
pub fn problems(settings: &TlsSettings) -> Vec<TlsConfigError> {
    let mut found = Vec::new();
    if let Some(ca) = &settings.ca {
        found.extend(roots_from(ca).err());
    }
    let chain = settings.cert.as_deref().map(chain_from);
    let key = settings.key.as_deref().map(key_from);
    found.extend(chain.as_ref().and_then(|c| c.as_ref().err().cloned()));
    found.extend(key.as_ref().and_then(|k| k.as_ref().err().cloned()));
    if chain.is_some() != key.is_some() {
        found.push(TlsConfigError::HalfIdentity);
    }
    if let Some(name) = &settings.server_name {
        if ServerName::try_from(name.clone()).is_err() {
            found.push(TlsConfigError::ServerName(name.clone()));
        }
    }
    if found.is_empty() {
        let on = TlsSettings {
            enabled: true,
            ..settings.clone()
        };
        found.extend(NodeTls::new(&on).err());
    }
    found
}

/// A hash of the contents of the files `settings` names.
fn files_hash(settings: &TlsSettings) -> Result<u64, TlsConfigError> {
    let mut all = Vec::new();
    for path in [&settings.ca, &settings.cert, &settings.key]
        .into_iter()
        .flatten()
    {
        all.extend(std::fs::read(path).map_err(|e| file_error(path, e))?);
        all.push(0);
    }
    Ok(xxhash_rust::xxh3::xxh3_64(&all))
}

/// A connector for `settings`, made from the files as they are now.
fn connector_for(settings: &TlsSettings) -> Result<TlsConnector, TlsConfigError> {
    let roots = match &settings.ca {
        Some(path) => roots_from(path)?,
        None => system_roots()?,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsConfigError::Identity)?
        .with_root_certificates(roots);
    let mut config = match (&settings.cert, &settings.key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(chain_from(cert)?, key_from(key)?)
            .map_err(TlsConfigError::Identity)?,
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(TlsConfigError::HalfIdentity),
    };
    config.alpn_protocols = match settings.protocol {
        super::UpstreamProtocol::Http1 => vec![b"http/1.1".to_vec()],
        super::UpstreamProtocol::H2 => vec![b"h2".to_vec()],
        super::UpstreamProtocol::Auto => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
    };
    Ok(TlsConnector::from(Arc::new(config)))
}

/// A TLS handshake with a node that failed, and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("TLS with {addr} failed: {reason}")]
pub struct TlsFailure {
    /// The node.
    pub addr: SocketAddr,
    /// Why, in an operator's words.
    pub reason: String,
}

fn reason(e: &std::io::Error, name: &ServerName<'_>) -> String {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(e) => rustls_reason(e, Some(&name.to_str())),
        None => e.to_string(),
    }
}

/// Why rustls refused a session with the node known as `name`, in an operator's words.
pub fn rustls_reason(e: &rustls::Error, name: Option<&str>) -> String {
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => {
                "the node's certificate is not signed by a trusted CA (OUTRIGGER_UPSTREAM_TLS_CA)"
                    .into()
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!(
                "the node's certificate is not valid for {:?} (OUTRIGGER_UPSTREAM_TLS_SERVER_NAME)",
                name.unwrap_or("its name")
            )
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the node's certificate has expired".into()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "the node's certificate is not valid yet".into()
            }
            other => format!("the node's certificate is refused: {other:?}"),
        },
        rustls::Error::AlertReceived(AlertDescription::CertificateRequired) => {
            "the node requires a client certificate (OUTRIGGER_UPSTREAM_TLS_CERT and _KEY)".into()
        }
        rustls::Error::AlertReceived(alert) => format!("the node refused the session: {alert:?}"),
        other => other.to_string(),
    }
}

/// The reason of a TLS alert from a node found among the causes of `e` (a hyper error whose
/// read failed with rustls' error), if any.
pub fn alert_in(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cause = Some(e);
    while let Some(c) = cause {
        let rustls_error = c.downcast_ref::<rustls::Error>().or_else(|| {
            c.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(r) = rustls_error {
            return Some(rustls_reason(r, None));
        }
        cause = c.source();
    }
    None
}

fn file_error(path: &Path, detail: impl std::fmt::Display) -> TlsConfigError {
    TlsConfigError::File {
        path: path.to_path_buf(),
        detail: detail.to_string(),
    }
}

fn chain_from(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no PEM certificate in it"));
    }
    Ok(certs)
}

fn key_from(path: &Path) -> Result<PrivateKeyDer<'static>, TlsConfigError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => file_error(path, "no PEM private key in it"),
        other => file_error(path, other),
    })
}

fn roots_from(path: &Path) -> Result<RootCertStore, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    for cert in chain_from(path)? {
        roots
            .add(cert)
            .map_err(|e| file_error(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, TlsConfigError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map_or_else(|| "none found".to_string(), ToString::to_string);
        return Err(TlsConfigError::NoRoots(why));
    }
    Ok(roots)
}
