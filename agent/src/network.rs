//! The node's network at run time: which network a data dir belongs to, and a private
//! network's keys, read from their files at start and again on demand (SIGHUP and
//! `POST /network-keys/reload`).
//!
//! A data dir remembers its network in `D/network` from its first run on, so a node graph
//! learned on one network is never brought into another (a testnet data dir started as
//! mainnet is refused). Reloading re-reads every `--network-key-file` given at start and hands
//! the keys to the [`Transport`], which re-proves membership to its peers and closes the
//! connections no key covers any more. Nothing here checks proofs or closes connections.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::tls::{NetworkId, NetworkKey, TlsError};
use crate::transport::{Transport, unix_now};

/// The file in a data dir that names its network.
pub const NETWORK_FILE: &str = "network";

/// Why a data dir or the network keys cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetworkError {
    /// The data dir was made for another network.
    #[error(
        "data dir {} belongs to network {found} (see its {NETWORK_FILE} file) but the agent was \
         started on {wanted}: use another --data-dir, or --network {found}",
        dir.display()
    )]
    OtherNetwork {
        /// The data dir.
        dir: PathBuf,
        /// The network it belongs to.
        found: String,
        /// The network asked for.
        wanted: String,
    },
    /// The data dir's network file cannot be read or written.
    #[error("{}: {source}", path.display())]
    NetworkFile {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A key file is unreadable or malformed.
    #[error(transparent)]
    KeyFile(#[from] TlsError),
    /// A private network without key files.
    #[error("--network {0} is private: give at least one --network-key-file")]
    NoKeys(String),
    /// Every key has expired.
    #[error(
        "every key in the --network-key-files has expired (not-after is in the past): give a \
         current key"
    )]
    AllExpired,
    /// Key files for a network that has no keys.
    #[error("--network-key-file is only for private:<name> networks, not {0}")]
    NotPrivate(String),
}

/// Binds `dir` to `network`: writes [`NETWORK_FILE`] on the first run, and refuses a data dir
/// that names another network.
pub fn bind_data_dir(dir: &Path, network: &NetworkId) -> Result<(), NetworkError> {
    let path = dir.join(NETWORK_FILE);
    let io = |source| NetworkError::NetworkFile {
        path: path.clone(),
        source,
    };
    let wanted = network.to_string();
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let found = text.trim();
            if found == wanted {
                Ok(())
            } else {
                Err(NetworkError::OtherNetwork {
                    dir: dir.to_path_buf(),
                    // Bounded: the file is ours, but a damaged one should not flood the log.
                    found: found.chars().take(64).collect(),
                    wanted,
                })
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Written whole under a temporary name, then renamed: a crash leaves no half file.
            let tmp = dir.join(format!("{NETWORK_FILE}.tmp"));
            std::fs::write(&tmp, format!("{wanted}\n")).map_err(io)?;
            std::fs::rename(&tmp, &path).map_err(io)
        }
        Err(e) => Err(io(e)),
    }
}

/// The `--network-key-file`s of a node.
#[derive(Clone, Debug)]
pub struct KeyFiles {
    network: NetworkId,
    paths: Vec<PathBuf>,
}

impl KeyFiles {
    /// The key files of `network`, in command-line order (the first key is the current one).
    pub fn new(network: NetworkId, paths: Vec<PathBuf>) -> KeyFiles {
        KeyFiles { network, paths }
    }

    /// Reads every file. A private network needs at least one key valid at `now_unix`;
    /// other networks take no key files.
    pub fn load(&self, now_unix: u64) -> Result<Vec<NetworkKey>, NetworkError> {
        if !self.network.is_private() {
            return match self.paths.is_empty() {
                true => Ok(Vec::new()),
                false => Err(NetworkError::NotPrivate(self.network.to_string())),
            };
        }
        if self.paths.is_empty() {
            return Err(NetworkError::NoKeys(self.network.to_string()));
        }
        let mut keys = Vec::new();
        for p in &self.paths {
            keys.extend(NetworkKey::load(p)?);
        }
        if !keys.iter().any(|k| k.is_valid_at(now_unix)) {
            return Err(NetworkError::AllExpired);
        }
        Ok(keys)
    }
}

/// What a reload found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Reloaded {
    /// Keys read from the files.
    pub keys: usize,
    /// Of those, the ones valid now.
    pub valid: usize,
}

/// Re-reads a private network's key files into a running transport.
#[derive(Clone, Debug)]
pub struct KeyReloader {
    files: KeyFiles,
    transport: Transport,
}

impl KeyReloader {
    /// Reloads `files` into `transport`.
    pub fn new(files: KeyFiles, transport: Transport) -> KeyReloader {
        KeyReloader { files, transport }
    }

    /// Reads the files again and hands the keys to the transport. On any error the keys in
    /// use stay as they were.
    pub fn reload(&self) -> Result<Reloaded, NetworkError> {
        let now = unix_now();
        let keys = self.files.load(now)?;
        let loaded = Reloaded {
            keys: keys.len(),
            valid: keys.iter().filter(|k| k.is_valid_at(now)).count(),
        };
        self.transport.set_keys(keys);
        Ok(loaded)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_data_dir_keeps_the_network_of_its_first_run() {
        let dir = tempfile::tempdir().unwrap();
        bind_data_dir(dir.path(), &NetworkId::Testnet).unwrap();
        bind_data_dir(dir.path(), &NetworkId::Testnet).unwrap();
        let err = bind_data_dir(dir.path(), &NetworkId::Mainnet).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("belongs to network testnet") && msg.contains("started on mainnet"),
            "{msg}"
        );
        let lab = NetworkId::Private("lab".into());
        assert!(bind_data_dir(dir.path(), &lab).is_err());
        assert!(!dir.path().join("network.tmp").exists());
    }

    #[test]
    fn key_files_fit_the_network() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("k");
        std::fs::write(&f, format!("{}\nnot-after: 100\n", "ab".repeat(32))).unwrap();
        let lab = NetworkId::Private("lab".into());
        let files = KeyFiles::new(lab.clone(), vec![f.clone()]);
        assert_eq!(files.load(100).unwrap().len(), 1);
        assert!(matches!(files.load(101), Err(NetworkError::AllExpired)));
        assert!(matches!(
            KeyFiles::new(lab, vec![]).load(0),
            Err(NetworkError::NoKeys(_))
        ));
        assert!(matches!(
            KeyFiles::new(NetworkId::Mainnet, vec![f]).load(0),
            Err(NetworkError::NotPrivate(_))
        ));
        assert!(
            KeyFiles::new(NetworkId::Mainnet, vec![])
                .load(0)
                .unwrap()
                .is_empty()
        );
    }
}
