//! The node's long-term Ed25519 identity and its key file.
//!
//! What it does: generates the key from OS randomness, derives the [`NodeId`] (= the 32-byte
//! Ed25519 public key), signs and verifies messages, and keeps the secret seed in
//! `<data_dir>/node.key` (mode 0600, 64 hex characters and a newline). It also hands the key
//! to [`crate::tls`] as PKCS#8 so the QUIC certificate is bound to the same key.
//!
//! What it does not do: no key rotation (a new key is a new node), no encryption of the key
//! file at rest (file permissions are the protection), and no certificate handling (that is
//! [`crate::tls`]). Error messages never contain the secret or the file's content.

use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use chaosnet_proto::NodeId;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::pki_types::PrivatePkcs8KeyDer;

/// File name of the node key inside the data directory.
pub const KEY_FILE_NAME: &str = "node.key";

/// A valid key file is 64 hex characters plus a newline; anything much larger is not a key
/// file, and reading only this much keeps a wrong path (a log, a device) from eating memory.
const MAX_KEY_FILE_BYTES: u64 = 1024;

/// Why the node identity could not be loaded, created or saved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The key file exists (or should) but could not be read.
    #[error("cannot read node key file {}: {source}", path.display())]
    Read {
        /// The key file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The key file does not hold a key. The reason names only lengths and positions, never
    /// the content, because the content may be a secret.
    #[error("node key file {} is malformed: {reason}", path.display())]
    Malformed {
        /// The key file.
        path: PathBuf,
        /// What is wrong, without the file's content.
        reason: String,
    },
    /// The data directory could not be created.
    #[error("cannot create data directory {}: {source}", path.display())]
    DataDir {
        /// The data directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Saving would overwrite an existing key file, and `force` was not given.
    #[error("node key file {} already exists; refusing to overwrite it", path.display())]
    Exists {
        /// The existing key file.
        path: PathBuf,
    },
    /// Writing the key file (or its temporary file) failed.
    #[error("cannot write node key file {}: {source}", path.display())]
    Write {
        /// The key file (or the temporary file next to it).
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The operating system's random number generator failed.
    #[error("os random number generator failed")]
    Random,
    /// The key could not be encoded as PKCS#8 for the certificate.
    #[error("cannot encode the node key as pkcs#8")]
    Encode,
}

/// The node's Ed25519 signing key. Its public half is the [`NodeId`].
///
/// `Debug` shows only the NodeId; the secret is never printed. The key is zeroized on drop
/// (ed25519-dalek's `zeroize` feature).
#[derive(Clone)]
pub struct Identity {
    key: SigningKey,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("node_id", &self.node_id())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// A new identity from the operating system's random number generator. This is the one
    /// place in chaosnet where OS randomness is wanted: a key must not be reproducible.
    pub fn generate() -> Result<Identity, IdentityError> {
        let mut seed = [0u8; 32];
        SystemRandom::new()
            .fill(&mut seed)
            .map_err(|_| IdentityError::Random)?;
        let key = SigningKey::from_bytes(&seed);
        seed.fill(0);
        Ok(Identity { key })
    }

    /// The identity with this 32-byte secret seed. Meant for tests and tools that derive
    /// keys deterministically; nodes use [`Identity::generate`] or [`Identity::load`].
    pub fn from_seed(seed: &[u8; 32]) -> Identity {
        Identity {
            key: SigningKey::from_bytes(seed),
        }
    }

    /// This node's id: the 32-byte Ed25519 public key.
    pub fn node_id(&self) -> NodeId {
        NodeId(self.key.verifying_key().to_bytes())
    }

    /// The secret key in the form the protocol core signs signals with.
    pub fn secret_key(&self) -> chaosnet_proto::SecretKey {
        chaosnet_proto::SecretKey::from_bytes(self.key.to_bytes())
    }

    /// Ed25519 signature of `msg`.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.key.sign(msg).to_bytes()
    }

    /// The key as PKCS#8 DER, for rcgen and rustls. Crate-private: only [`crate::tls`] needs
    /// the secret in this form.
    pub(crate) fn pkcs8_der(&self) -> Result<PrivatePkcs8KeyDer<'static>, IdentityError> {
        let doc = self.key.to_pkcs8_der().map_err(|_| IdentityError::Encode)?;
        Ok(PrivatePkcs8KeyDer::from(doc.as_bytes().to_vec()))
    }

    /// Reads a key file written by [`Identity::save`]: 64 hex characters, optionally followed
    /// by whitespace (a newline). Warns if the file is readable by group or others.
    pub fn load(path: &Path) -> Result<Identity, IdentityError> {
        let read_err = |source| IdentityError::Read {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(read_err)?;
        let meta = file.metadata().map_err(read_err)?;
        if !meta.is_file() {
            return Err(IdentityError::Malformed {
                path: path.to_path_buf(),
                reason: "not a regular file".to_string(),
            });
        }
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format_args!("{:o}", meta.permissions().mode() & 0o777),
                "node key file is readable by group or others; it should be mode 0600"
            );
        }
        let mut buf = Vec::with_capacity(80);
        file.take(MAX_KEY_FILE_BYTES + 1)
            .read_to_end(&mut buf)
            .map_err(read_err)?;
        let result = parse_seed(&buf).map(|seed| Identity::from_seed(&seed));
        // The buffer held the secret in hex; don't leave it in freed memory.
        buf.fill(0);
        result.map_err(|reason| IdentityError::Malformed {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Writes the key file atomically with mode 0600: the seed goes to a temporary file in
    /// the same directory (created 0600, so the secret is never readable by others, not even
    /// briefly), is synced, and then takes the final name. Without `force`, an existing file
    /// is never replaced (the final step is a hard link, which fails if the name exists).
    pub fn save(&self, path: &Path, force: bool) -> Result<(), IdentityError> {
        if !force && fs::symlink_metadata(path).is_ok() {
            return Err(IdentityError::Exists {
                path: path.to_path_buf(),
            });
        }
        let (tmp, mut file) = create_temp_next_to(path)?;
        let write_err = |source| IdentityError::Write {
            path: tmp.clone(),
            source,
        };
        let mut content = hex::encode(self.key.to_bytes()).into_bytes();
        content.push(b'\n');
        let written = file.write_all(&content).and_then(|()| file.sync_all());
        content.fill(0);
        drop(file);
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(write_err(e));
        }
        let placed = if force {
            fs::rename(&tmp, path)
        } else {
            // A hard link refuses to replace an existing name, atomically; rename would not.
            match fs::hard_link(&tmp, path) {
                Ok(()) => fs::remove_file(&tmp).or(Ok(())),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let _ = fs::remove_file(&tmp);
                    return Err(IdentityError::Exists {
                        path: path.to_path_buf(),
                    });
                }
                // Some filesystems have no hard links; the existence check above is then the
                // only guard, which is racy only against a concurrent writer of the same file.
                Err(_) => fs::rename(&tmp, path),
            }
        };
        if let Err(source) = placed {
            let _ = fs::remove_file(&tmp);
            return Err(IdentityError::Write {
                path: path.to_path_buf(),
                source,
            });
        }
        // Make the new directory entry durable; best effort, since not every filesystem lets
        // a directory be opened and synced, and the file itself is already synced.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && let Ok(d) = File::open(dir)
        {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Loads `<data_dir>/node.key`, or creates the directory (mode 0700) and a new key if
    /// there is none. Returns the identity and whether it was created just now.
    pub fn load_or_create(data_dir: &Path) -> Result<(Identity, bool), IdentityError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data_dir)
            .map_err(|source| IdentityError::DataDir {
                path: data_dir.to_path_buf(),
                source,
            })?;
        let path = data_dir.join(KEY_FILE_NAME);
        match Identity::load(&path) {
            Ok(id) => return Ok((id, false)),
            Err(IdentityError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            }
            Err(e) => return Err(e),
        }
        let id = Identity::generate()?;
        match id.save(&path, false) {
            Ok(()) => Ok((id, true)),
            // Another process created the key between our load and save: use theirs, so
            // both processes agree on one identity.
            Err(IdentityError::Exists { .. }) => Ok((Identity::load(&path)?, false)),
            Err(e) => Err(e),
        }
    }
}

/// Checks an Ed25519 signature by `node` over `msg`. Uses strict verification (rejects
/// small-order keys and non-canonical signatures), so one message has one valid signature per
/// key. Any malformed key or signature is simply `false`.
pub fn verify(node: &NodeId, msg: &[u8], sig: &[u8; 64]) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(&node.0) else {
        return false;
    };
    key.verify_strict(msg, &Signature::from_bytes(sig)).is_ok()
}

/// Parses the key file content into the seed. The error names lengths only.
fn parse_seed(buf: &[u8]) -> Result<[u8; 32], String> {
    if buf.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(format!(
            "larger than {MAX_KEY_FILE_BYTES} bytes; expected 64 hex characters"
        ));
    }
    let text = buf.trim_ascii();
    if text.len() != 64 {
        return Err(format!(
            "expected 64 hex characters, found {} bytes",
            text.len()
        ));
    }
    if let Some(pos) = text.iter().position(|b| !b.is_ascii_hexdigit()) {
        return Err(format!(
            "expected 64 hex characters, found a non-hex byte at offset {pos}"
        ));
    }
    let mut seed = [0u8; 32];
    hex::decode_to_slice(text, &mut seed).map_err(|_| "expected 64 hex characters".to_string())?;
    Ok(seed)
}

/// Creates a fresh 0600 temporary file in the directory of `path`. Names carry the pid and a
/// counter; `create_new` makes a stale file from a crashed run a retry, never a reuse.
fn create_temp_next_to(path: &Path) -> Result<(PathBuf, File), IdentityError> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let base = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| KEY_FILE_NAME.to_string());
    let mut last_err = None;
    for _ in 0..16 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{base}.tmp.{}.{n}", std::process::id()));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some((tmp, e)),
            Err(source) => return Err(IdentityError::Write { path: tmp, source }),
        }
    }
    let (path, source) = last_err.unwrap_or_else(|| {
        (
            dir.to_path_buf(),
            io::Error::other("no free temporary file name"),
        )
    });
    Err(IdentityError::Write { path, source })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn save_then_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE_NAME);
        let id = Identity::generate().unwrap();
        id.save(&path, false).unwrap();
        let back = Identity::load(&path).unwrap();
        assert_eq!(back.node_id(), id.node_id());
        assert_eq!(back.sign(b"m"), id.sign(b"m"));
        // Exactly 64 hex characters and a newline.
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.len(), 65);
        assert!(text.ends_with('\n'));
        // No temporary files left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(KEY_FILE_NAME)]);
    }

    #[test]
    fn saved_file_has_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE_NAME);
        Identity::generate().unwrap().save(&path, false).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "mode was {mode:o}");
    }

    #[test]
    fn save_refuses_to_overwrite_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE_NAME);
        let a = Identity::generate().unwrap();
        let b = Identity::generate().unwrap();
        a.save(&path, false).unwrap();
        let err = b.save(&path, false).unwrap_err();
        assert!(matches!(err, IdentityError::Exists { .. }), "{err}");
        assert!(err.to_string().contains("already exists"));
        assert_eq!(Identity::load(&path).unwrap().node_id(), a.node_id());
        b.save(&path, true).unwrap();
        assert_eq!(Identity::load(&path).unwrap().node_id(), b.node_id());
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn garbage_file_is_a_clear_error_without_the_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE_NAME);
        // Right length, but not hex: the message must not echo it.
        let secretish = "zz".repeat(32);
        fs::write(&path, &secretish).unwrap();
        let err = Identity::load(&path).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, IdentityError::Malformed { .. }), "{msg}");
        assert!(msg.contains("node.key"), "{msg}");
        assert!(msg.contains("non-hex byte at offset 0"), "{msg}");
        assert!(!msg.contains("zz"), "{msg}");

        fs::write(&path, "abcd\n").unwrap();
        let msg = Identity::load(&path).unwrap_err().to_string();
        assert!(
            msg.contains("expected 64 hex characters, found 4 bytes"),
            "{msg}"
        );

        fs::write(&path, vec![b'a'; 5000]).unwrap();
        let msg = Identity::load(&path).unwrap_err().to_string();
        assert!(msg.contains("larger than"), "{msg}");
    }

    #[test]
    fn missing_file_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.key");
        let err = Identity::load(&path).unwrap_err();
        let IdentityError::Read { source, .. } = &err else {
            panic!("expected a read error, got {err}");
        };
        assert_eq!(source.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("nope.key"));
    }

    #[test]
    fn load_or_create_twice_gives_the_same_node_id() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("a").join("data");
        let (first, created) = Identity::load_or_create(&data).unwrap();
        assert!(created);
        let (second, created) = Identity::load_or_create(&data).unwrap();
        assert!(!created);
        assert_eq!(first.node_id(), second.node_id());
        let mode = fs::metadata(&data).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "data dir mode was {mode:o}");
    }

    #[test]
    fn load_or_create_reports_an_uncreatable_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        fs::write(&blocker, b"x").unwrap();
        let err = Identity::load_or_create(&blocker.join("sub")).unwrap_err();
        assert!(matches!(err, IdentityError::DataDir { .. }), "{err}");
        assert!(err.to_string().contains("cannot create data directory"));
    }

    #[test]
    fn load_or_create_does_not_replace_a_corrupt_key() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(KEY_FILE_NAME), "garbage\n").unwrap();
        let err = Identity::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, IdentityError::Malformed { .. }), "{err}");
        assert_eq!(
            fs::read_to_string(dir.path().join(KEY_FILE_NAME)).unwrap(),
            "garbage\n"
        );
    }

    #[test]
    fn signatures_verify_only_for_the_right_key_and_message() {
        let a = Identity::generate().unwrap();
        let b = Identity::generate().unwrap();
        let sig = a.sign(b"hello");
        assert!(verify(&a.node_id(), b"hello", &sig));
        assert!(!verify(&a.node_id(), b"hellp", &sig));
        assert!(!verify(&b.node_id(), b"hello", &sig));
        let mut bad = sig;
        bad[0] ^= 1;
        assert!(!verify(&a.node_id(), b"hello", &bad));
        // Not a curve point / garbage key: false, not a panic.
        assert!(!verify(&NodeId([0xff; 32]), b"hello", &sig));
    }

    #[test]
    fn generated_keys_differ_and_seeded_keys_repeat() {
        assert_ne!(
            Identity::generate().unwrap().node_id(),
            Identity::generate().unwrap().node_id()
        );
        assert_eq!(
            Identity::from_seed(&[7; 32]).node_id(),
            Identity::from_seed(&[7; 32]).node_id()
        );
    }

    #[test]
    fn debug_does_not_print_the_secret() {
        let id = Identity::from_seed(&[0xab; 32]);
        let dbg = format!("{id:?}");
        assert!(!dbg.contains("abab"), "{dbg}");
        assert!(!dbg.contains("171, 171"), "{dbg}");
    }

    #[test]
    fn pkcs8_is_accepted_by_rcgen_with_the_same_public_key() {
        let id = Identity::generate().unwrap();
        let der = id.pkcs8_der().unwrap();
        let kp = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_ED25519).unwrap();
        assert_eq!(kp.public_key_raw(), id.node_id().0.as_slice());
    }
}
