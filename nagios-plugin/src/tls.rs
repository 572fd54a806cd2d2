//! The TLS material one check uses, read once from its PEM files: the CA certificates to trust
//! (`--ca-file`) and the client certificate with its key (`--client-cert`, `--client-key`).
//! The call (ureq) and the certificate check (rustls) are both given these.

use crate::config::CheckConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};

/// A file the check cannot use: UNKNOWN, as the guidelines say for a check that cannot run.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsFileError {
    #[error("cannot read {flag} {}: {source}", path.display())]
    Read {
        flag: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{flag} {} holds no PEM certificate", path.display())]
    NoCertificate { flag: &'static str, path: PathBuf },
    #[error("--client-key {} holds no PEM private key", .0.display())]
    NoKey(PathBuf),
}

pub(crate) struct TlsFiles {
    pub ca: Option<Vec<CertificateDer<'static>>>,
    pub client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    /// The key file's PEM text, for ureq (which takes keys only as its own PEM items).
    pub client_key_pem: Vec<u8>,
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|source| TlsFileError::Read {
        flag,
        path: path.to_owned(),
        source,
    })
}

fn certificates(
    flag: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let pem = read(flag, path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsFileError::NoCertificate {
            flag,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

impl TlsFiles {
    pub(crate) fn load(cfg: &CheckConfig) -> Result<Self, TlsFileError> {
        let ca = cfg
            .ca_file
            .as_deref()
            .map(|p| certificates("--ca-file", p))
            .transpose()?;
        let (client, client_key_pem) = match &cfg.client_cert {
            None => (None, Vec::new()),
            Some((cert, key)) => {
                let chain = certificates("--client-cert", cert)?;
                let pem = read("--client-key", key)?;
                let key = PrivateKeyDer::from_pem_slice(&pem)
                    .map_err(|_| TlsFileError::NoKey(key.clone()))?;
                (Some((chain, key)), pem)
            }
        };
        Ok(Self {
            ca,
            client,
            client_key_pem,
        })
    }
}
