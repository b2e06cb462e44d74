//! HTTPS with HTTP/2 for the tests: a certificate made for this run with
//! the openssl command line tool (Debian package `openssl`, which
//! scripts/test.sh installs), a server that counts the connections it
//! accepts, and an HTTP/2 client that trusts the certificate.
#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Body;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// A self-signed certificate for 127.0.0.1 and its key, PEM files in a
/// folder of their own (removed on drop).
pub struct TestCert {
    pub dir: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCert {
    /// A P-256 certificate for `127.0.0.1` and `localhost`, valid for two
    /// days, made by `openssl req -x509`; not a CA (`CA:FALSE`), so rustls
    /// accepts it as its own trust anchor.
    pub fn make(tag: &str) -> TestCert {
        let dir = std::env::temp_dir().join(format!("htmx-sse-{tag}-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "key.pem",
                "-out",
                "cert.pem",
                "-days",
                "2",
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1,DNS:localhost",
                "-addext",
                "basicConstraints=critical,CA:FALSE",
                "-addext",
                "extendedKeyUsage=serverAuth",
            ])
            .current_dir(&dir)
            .output()
            .expect("openssl not found: apt-get install -y openssl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        TestCert {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            dir,
        }
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::aws_lc_rs::default_provider())
    }

    /// A server configuration with this certificate offering `h2` and
    /// `http/1.1`, as the demo's.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let certs = CertificateDer::pem_file_iter(&self.cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(&self.key).unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(Self::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// A client configuration that trusts this certificate only and offers
    /// `alpn`.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&self.cert).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Self::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

impl Drop for TestCert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Opens one TLS connection to 127.0.0.1:`port` that verifies `cert`,
/// offers only `h2`, and returns an HTTP/2 client on it (every request is a
/// stream of this one connection) with the protocol the server chose.
pub async fn h2_client(port: u16, cert: &TestCert) -> (SendRequest<Body>, Option<Vec<u8>>) {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(cert.client_config(&[b"h2"]));
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    (send, alpn)
}

/// Serves `app` over TLS with `cert` on a free port of 127.0.0.1, in
/// HTTP/2 or HTTP/1.1 as ALPN chose (the demo's set-up); returns its base
/// URL (`https://127.0.0.1:PORT`) and the server's task. Each TCP
/// connection accepted adds one to `accepted`.
pub async fn serve(
    app: Router,
    cert: &TestCert,
    accepted: Arc<AtomicUsize>,
) -> (String, JoinHandle<()>) {
    use hyper_util::server::conn::auto;
    use hyper_util::service::TowerToHyperService;

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(cert.server_config());
    let service = TowerToHyperService::new(app);
    let count = accepted;
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            count.fetch_add(1, Ordering::SeqCst);
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let service = service.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (format!("https://{addr}"), task)
}
