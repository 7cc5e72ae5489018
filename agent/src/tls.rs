//! QUIC TLS bound to node identities, network segregation, and private-network membership.
//!
//! What it does:
//! - [`NetworkId`] names a network (`mainnet`, `testnet`, `private:<name>`) and puts it into
//!   the ALPN, so nodes of different networks fail the TLS handshake itself.
//! - [`server_config`] / [`client_config`] build quinn configs (ring provider, TLS 1.3 only,
//!   mutual authentication) whose certificate is a self-signed X.509 certificate over the node's
//!   Ed25519 key. The verifiers accept exactly one self-signed Ed25519 certificate; the dialer
//!   additionally checks that the key equals the NodeId it meant to reach, which it passes as
//!   the server name ([`server_name`]). So one client config serves every dial.
//! - [`peer_node_id`] reads the authenticated NodeId of a connection's peer.
//! - [`NetworkKey`], [`membership_proof`] and [`verify_membership`] prove membership of a
//!   private network with an HMAC over the TLS exporter, so a proof is bound to one session and
//!   one prover. Several keys may be held at once for rotation.
//! - [`classify_connection_error`] maps quinn errors to a [`Refusal`] metric label.
//!
//! What it does not do: it does not send or receive proofs (the caller carries them over a
//! stream and closes refused connections with [`Refusal::close_code`]), it does not count
//! refusals, and it trusts no certificate authority: identity is the key, not a name.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chaosnet_proto::NodeId;
use quinn::crypto::rustls::{HandshakeData, QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, TransportConfig, VarInt};
use ring::hmac;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use x509_parser::oid_registry::OID_SIG_ED25519;

use crate::identity::{Identity, IdentityError};

/// Every ALPN starts with this; the network's text form follows.
pub const ALPN_PREFIX: &[u8] = b"chaosnet/1/";

/// Exporter label for membership proofs. Versioned so a future proof format cannot be
/// confused with this one.
pub const MEMBERSHIP_LABEL: &[u8] = b"chaosnet membership v1";

/// A node sends at most this many proofs (one per key it holds), and a verifier looks at no
/// more than this many, so a peer cannot make us compute unbounded HMACs.
pub const MAX_PROOFS: usize = 4;

/// QUIC keep-alive interval: 5 s. NAT UDP mappings commonly expire after ~30 s of silence
/// (some after 15 s); a ping every 5 s keeps them open with margin for a few lost packets,
/// and stays well below the idle timeout so a healthy but quiet connection never times out.
/// quinn's default is no keep-alive at all.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(5);

/// QUIC idle timeout: 30 s (the smaller of both peers' values applies). With keep-alives
/// every 5 s this means ~6 missed round trips before a dead peer is declared gone: long
/// enough to ride out a short outage, short enough that the node graph learns of dead
/// connections quickly.
pub const MAX_IDLE_TIMEOUT_MS: u32 = 30_000;

/// Concurrent bidirectional streams a peer may open: 64. Requests (ping, lookup, signalling,
/// relay circuits) each use one short-lived stream; 64 in flight is plenty for one peer and
/// bounds the memory a single peer can tie up.
pub const MAX_BIDI_STREAMS: u32 = 64;

/// Concurrent unidirectional streams a peer may open: 8. Only one-way notifications use
/// them, so a small bound suffices.
pub const MAX_UNI_STREAMS: u32 = 8;

/// Bytes a peer may send on one stream ahead of what we have read: 128 KiB, two of the
/// largest frames ([`chaosnet_proto::MAX_FRAME_LEN`]). quinn's default (1.25 MB) would
/// let 64 stalled streams pin 80 MB per connection.
pub const STREAM_RECEIVE_WINDOW: u32 = 128 * 1024;

/// Bytes a peer may send on all streams of a connection together ahead of what we have
/// read: 1 MiB (quinn's default is unlimited). This is what a connection that opens every
/// stream and then stalls can pin in quinn's buffers; it still carries a relay circuit at
/// 1 MiB per round trip (≈ 20 MB/s at 50 ms).
pub const CONNECTION_RECEIVE_WINDOW: u32 = 1024 * 1024;

/// Bytes we keep buffered for sending on one connection (unsent or unacknowledged): 1 MiB
/// (quinn's default is 10 MB), so a peer that never reads its responses pins no more.
pub const SEND_WINDOW: u64 = 1024 * 1024;

/// Longest private network name.
pub const MAX_NETWORK_NAME_LEN: usize = 32;

/// A network key file is one key line, one optional expiry line and comments; anything
/// larger is the wrong file.
const MAX_KEY_FILE_BYTES: u64 = 4096;

// ---------------------------------------------------------------------------------------------
// Network ids
// ---------------------------------------------------------------------------------------------

/// Which network a node belongs to. Nodes of different networks refuse each other during the
/// TLS handshake, because the network is the ALPN.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NetworkId {
    /// The public network.
    Mainnet,
    /// The public test network.
    Testnet,
    /// A private network, `private:<name>`; name = 1..=32 characters of `[a-z0-9-]`. Members
    /// also need a [`NetworkKey`].
    Private(String),
}

/// Why a string is not a [`NetworkId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseNetworkIdError {
    /// Not `mainnet`, `testnet` or `private:<name>`.
    #[error("unknown network {0:?}: expected \"mainnet\", \"testnet\" or \"private:<name>\"")]
    Unknown(String),
    /// `private:` with nothing after it.
    #[error("private network name is empty; use 1 to 32 characters of a-z, 0-9 and '-'")]
    EmptyName,
    /// The private network name is longer than 32 characters.
    #[error("private network name is {0} characters long; at most 32 are allowed")]
    NameTooLong(usize),
    /// The private network name has a character outside `[a-z0-9-]`.
    #[error("private network name has {ch:?} at position {pos}; only a-z, 0-9 and '-' are allowed")]
    BadNameChar {
        /// The offending character.
        ch: char,
        /// Its position in the name (0-based, in characters).
        pos: usize,
    },
}

impl NetworkId {
    /// Whether members need a [`NetworkKey`].
    pub fn is_private(&self) -> bool {
        matches!(self, NetworkId::Private(_))
    }

    /// The ALPN protocol id: `chaosnet/1/` followed by the text form, e.g.
    /// `chaosnet/1/private:lab`.
    pub fn alpn(&self) -> Vec<u8> {
        let mut alpn = ALPN_PREFIX.to_vec();
        alpn.extend_from_slice(self.to_string().as_bytes());
        alpn
    }
}

impl fmt::Display for NetworkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetworkId::Mainnet => f.write_str("mainnet"),
            NetworkId::Testnet => f.write_str("testnet"),
            NetworkId::Private(name) => write!(f, "private:{name}"),
        }
    }
}

impl FromStr for NetworkId {
    type Err = ParseNetworkIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "mainnet" => return Ok(NetworkId::Mainnet),
            "testnet" => return Ok(NetworkId::Testnet),
            _ => {}
        }
        let Some(name) = s.strip_prefix("private:") else {
            // Bound the echo: this string comes from config or a command line, but a huge
            // one should not flood the log.
            return Err(ParseNetworkIdError::Unknown(s.chars().take(64).collect()));
        };
        if name.is_empty() {
            return Err(ParseNetworkIdError::EmptyName);
        }
        if let Some((pos, ch)) = name
            .chars()
            .enumerate()
            .find(|(_, c)| !matches!(c, 'a'..='z' | '0'..='9' | '-'))
        {
            return Err(ParseNetworkIdError::BadNameChar { ch, pos });
        }
        // All characters are ASCII now, so bytes = characters.
        if name.len() > MAX_NETWORK_NAME_LEN {
            return Err(ParseNetworkIdError::NameTooLong(name.len()));
        }
        Ok(NetworkId::Private(name.to_string()))
    }
}

// ---------------------------------------------------------------------------------------------
// Errors and refusals
// ---------------------------------------------------------------------------------------------

/// Why a TLS config, a peer identity or a membership proof could not be produced.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The node key could not be used.
    #[error("node key: {0}")]
    Identity(#[from] IdentityError),
    /// rcgen could not build the certificate.
    #[error("cannot generate the tls certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls rejected the configuration.
    #[error("tls configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// quinn rejected the rustls configuration.
    #[error("quic tls configuration: {0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    /// The network id is not valid (a hand-built `NetworkId::Private` with a bad name).
    #[error("invalid network id: {0}")]
    Network(#[from] ParseNetworkIdError),
    /// The connection has no peer certificate (not a rustls connection, or the handshake has
    /// not finished).
    #[error("the connection has no peer certificate")]
    NoPeerIdentity,
    /// The peer's certificate is not a single self-signed Ed25519 certificate. The verifiers
    /// refuse such peers, so this means the connection was not made with these configs.
    #[error("peer certificate is not a self-signed ed25519 certificate: {0}")]
    BadPeerCertificate(&'static str),
    /// The connection has no negotiated ALPN, which the membership proof is bound to.
    #[error("the connection has no negotiated alpn")]
    NoAlpn,
    /// The TLS exporter refused to produce keying material.
    #[error("tls keying material exporter failed")]
    Exporter,
    /// The network key file could not be read.
    #[error("cannot read network key file {}: {source}", path.display())]
    KeyFileRead {
        /// The key file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A line of the network key file is wrong. The reason never quotes the line, which may
    /// be a secret.
    #[error("network key file {}, line {line}: {reason}", path.display())]
    KeyFileLine {
        /// The key file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The network key file has no key line.
    #[error("network key file {} has no key: expected a line of 64 hex characters", path.display())]
    KeyFileNoKey {
        /// The key file.
        path: PathBuf,
    },
}

/// Why a connection was refused. Each value is a bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The peer is in another network (no common ALPN).
    #[error("peer is in another network")]
    WrongNetwork,
    /// The peer's membership proofs match none of our (unexpired) network keys.
    #[error("peer's network key does not match")]
    BadKey,
    /// The peer's certificate is not acceptable, or its key is not the NodeId we dialed.
    #[error("peer identity does not match")]
    IdentityMismatch,
    /// A private-network peer sent no membership proof.
    #[error("peer sent no membership proof")]
    MissingProof,
    /// An established connection's proofs no longer match a key we hold unexpired: the key
    /// it was accepted with expired or was removed from the key files.
    #[error("peer's network key expired or was removed")]
    NoValidKey,
}

/// QUIC application close codes for refusals made after the handshake (membership checks).
/// Arbitrary but fixed: they are part of the wire protocol.
const CLOSE_WRONG_NETWORK: u32 = 0x4e01;
const CLOSE_BAD_KEY: u32 = 0x4e02;
const CLOSE_IDENTITY_MISMATCH: u32 = 0x4e03;
const CLOSE_MISSING_PROOF: u32 = 0x4e04;
const CLOSE_NO_VALID_KEY: u32 = 0x4e05;

impl Refusal {
    /// The Prometheus label value.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Refusal::WrongNetwork => "wrong_network",
            Refusal::BadKey => "bad_key",
            Refusal::IdentityMismatch => "identity_mismatch",
            Refusal::MissingProof => "missing_proof",
            Refusal::NoValidKey => "no_valid_key",
        }
    }

    /// The QUIC application error code to close a connection with when refusing it after the
    /// handshake (`conn.close(r.close_code(), r.metric_label().as_bytes())`). The peer then
    /// sees `ApplicationClosed` with this code, and [`classify_connection_error`] maps it back.
    pub fn close_code(&self) -> VarInt {
        VarInt::from_u32(match self {
            Refusal::WrongNetwork => CLOSE_WRONG_NETWORK,
            Refusal::BadKey => CLOSE_BAD_KEY,
            Refusal::IdentityMismatch => CLOSE_IDENTITY_MISMATCH,
            Refusal::MissingProof => CLOSE_MISSING_PROOF,
            Refusal::NoValidKey => CLOSE_NO_VALID_KEY,
        })
    }

    fn from_close_code(code: VarInt) -> Option<Refusal> {
        let code = u32::try_from(code.into_inner()).ok()?;
        match code {
            CLOSE_WRONG_NETWORK => Some(Refusal::WrongNetwork),
            CLOSE_BAD_KEY => Some(Refusal::BadKey),
            CLOSE_IDENTITY_MISMATCH => Some(Refusal::IdentityMismatch),
            CLOSE_MISSING_PROOF => Some(Refusal::MissingProof),
            CLOSE_NO_VALID_KEY => Some(Refusal::NoValidKey),
            _ => None,
        }
    }
}

/// Classifies a failed or closed connection as a refusal, if it was one.
///
/// During the handshake, quinn reports a TLS alert as QUIC transport error `0x100 + alert`:
/// - on the side whose TLS stack raised it, as `ConnectionError::TransportError`;
/// - on the other side, which received the CONNECTION_CLOSE, as
///   `ConnectionError::ConnectionClosed`.
///
/// Both carry the same code (and quinn also sends the TLS error text as the close reason), so
/// both sides classify alike. Observed with quinn 0.11 on loopback:
/// - wrong network: the acceptor's rustls raises the alert, so the acceptor sees
///   `TransportError(crypto(0x78))` and the dialer `ConnectionClosed(crypto(0x78))`;
/// - wrong NodeId: the dialer's verifier raises it, so the dialer sees
///   `TransportError(crypto(0x2a))` and the acceptor `ConnectionClosed(crypto(0x2a))`.
///
/// Codes:
/// - alert 120 `no_application_protocol` (ALPN mismatch) → [`Refusal::WrongNetwork`];
/// - certificate alerts (bad/unsupported/unknown certificate, unknown CA, access denied,
///   decrypt error = bad signature, certificate required) → [`Refusal::IdentityMismatch`].
///   The verifiers here reject a wrong NodeId with `bad_certificate` (42).
///
/// After the handshake, an `ApplicationClosed` with one of the [`Refusal::close_code`] codes
/// maps back to that refusal. Everything else (timeouts, resets, other errors) → `None`.
pub fn classify_connection_error(err: &quinn::ConnectionError) -> Option<Refusal> {
    let code: u64 = match err {
        quinn::ConnectionError::TransportError(e) => e.code.into(),
        quinn::ConnectionError::ConnectionClosed(c) => c.error_code.into(),
        quinn::ConnectionError::ApplicationClosed(c) => {
            return Refusal::from_close_code(c.error_code);
        }
        _ => return None,
    };
    // QUIC carries TLS alerts as CRYPTO_ERROR codes 0x100..=0x1ff (RFC 9001 §4.8).
    if !(0x100..=0x1ff).contains(&code) {
        return None;
    }
    match code - 0x100 {
        120 => Some(Refusal::WrongNetwork), // no_application_protocol
        42 // bad_certificate
        | 43 // unsupported_certificate
        | 44 // certificate_revoked
        | 45 // certificate_expired
        | 46 // certificate_unknown
        | 48 // unknown_ca
        | 49 // access_denied
        | 51 // decrypt_error: a handshake signature that does not verify
        | 113 // bad_certificate_status_response
        | 116 // certificate_required: the peer sent no certificate
        => Some(Refusal::IdentityMismatch),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// quinn configs
// ---------------------------------------------------------------------------------------------

/// The server name a dialer passes to `Endpoint::connect` to reach `id`: the NodeId in
/// lowercase unpadded base32, 52 characters of `[a-z2-7]`, which is a valid DNS label. The
/// client verifier reads the expected NodeId back from it.
pub fn server_name(id: &NodeId) -> String {
    id.to_base32()
}

/// The QUIC transport parameters for every chaosnet connection; see [`KEEP_ALIVE_INTERVAL`],
/// [`MAX_IDLE_TIMEOUT_MS`], [`MAX_BIDI_STREAMS`], [`MAX_UNI_STREAMS`],
/// [`STREAM_RECEIVE_WINDOW`], [`CONNECTION_RECEIVE_WINDOW`] and [`SEND_WINDOW`] for the values
/// and why. QUIC datagrams are off: nothing reads them, so a peer's would only fill a buffer
/// (a peer that sends one anyway breaks the protocol and is closed by quinn).
pub fn transport_config() -> TransportConfig {
    let mut t = TransportConfig::default();
    t.keep_alive_interval(Some(KEEP_ALIVE_INTERVAL));
    t.max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(
        MAX_IDLE_TIMEOUT_MS,
    ))));
    t.max_concurrent_bidi_streams(VarInt::from_u32(MAX_BIDI_STREAMS));
    t.max_concurrent_uni_streams(VarInt::from_u32(MAX_UNI_STREAMS));
    t.stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW));
    t.receive_window(VarInt::from_u32(CONNECTION_RECEIVE_WINDOW));
    t.send_window(SEND_WINDOW);
    t.datagram_receive_buffer_size(None);
    t
}

/// The accepting side's quinn config: presents this node's certificate, requires a client
/// certificate (so the acceptor learns the dialer's NodeId), ALPN = `network.alpn()` only,
/// TLS 1.3 only, ring provider.
///
/// Session resumption is off: a resumed session skips certificate verification, and every
/// connection should prove its identity afresh.
pub fn server_config(
    identity: &Identity,
    network: &NetworkId,
) -> Result<quinn::ServerConfig, TlsError> {
    let alpn = checked_alpn(network)?;
    let (cert, key) = certificate(identity)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PeerVerifier::new(&provider));
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert], key.into())?;
    tls.alpn_protocols = vec![alpn];
    tls.send_tls13_tickets = 0;
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    // No 0-RTT (it needs resumption anyway): early data is replayable and arrives before the
    // client certificate is checked.
    tls.max_early_data_size = 0;
    let quic = QuicServerConfig::try_from(tls)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(Arc::new(transport_config()));
    Ok(config)
}

/// The dialing side's quinn config: presents this node's certificate, accepts the server
/// only if its key equals the NodeId given as server name ([`server_name`]), ALPN =
/// `network.alpn()` only, TLS 1.3 only, ring provider. One config serves all dials.
///
/// SNI is not sent: the verifier gets the expected NodeId from the local `connect` argument,
/// the acceptor has a single identity and does not need it, and leaving it out keeps the
/// dialed NodeId out of the cleartext ClientHello. Session resumption is off (see
/// [`server_config`]).
pub fn client_config(
    identity: &Identity,
    network: &NetworkId,
) -> Result<quinn::ClientConfig, TlsError> {
    let alpn = checked_alpn(network)?;
    let (cert, key) = certificate(identity)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PeerVerifier::new(&provider));
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![cert], key.into())?;
    tls.alpn_protocols = vec![alpn];
    tls.resumption = rustls::client::Resumption::disabled();
    tls.enable_sni = false;
    let quic = QuicClientConfig::try_from(tls)?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(Arc::new(transport_config()));
    Ok(config)
}

/// The authenticated NodeId of the connection's peer, from its certificate.
pub fn peer_node_id(conn: &quinn::Connection) -> Result<NodeId, TlsError> {
    let identity = conn.peer_identity().ok_or(TlsError::NoPeerIdentity)?;
    let certs = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| TlsError::NoPeerIdentity)?;
    match certs.as_slice() {
        [cert] => ed25519_key_of(cert)
            .map(NodeId)
            .map_err(|p| TlsError::BadPeerCertificate(p.reason())),
        [] => Err(TlsError::NoPeerIdentity),
        _ => Err(TlsError::BadPeerCertificate("more than one certificate")),
    }
}

/// Validates the network id (a hand-built `Private` name could be anything) and returns
/// its ALPN.
fn checked_alpn(network: &NetworkId) -> Result<Vec<u8>, TlsError> {
    let checked: NetworkId = network.to_string().parse()?;
    Ok(checked.alpn())
}

/// The node's self-signed certificate and its key, both over the node's Ed25519 key.
///
/// Validity is rcgen's default (1975 to 4096) and the verifiers ignore it: the certificate
/// only carries the key, and clock skew must not break connections.
fn certificate(
    identity: &Identity,
) -> Result<(CertificateDer<'static>, PrivatePkcs8KeyDer<'static>), TlsError> {
    let key_der = identity.pkcs8_der()?;
    let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&key_der, &rcgen::PKCS_ED25519)?;
    let name = server_name(&identity.node_id());
    let mut params = rcgen::CertificateParams::new(vec![name.clone()])?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, name);
    params.distinguished_name = dn;
    let cert = params.self_signed(&key_pair)?;
    Ok((cert.der().clone(), key_der))
}

// ---------------------------------------------------------------------------------------------
// Certificate verification
// ---------------------------------------------------------------------------------------------

/// What is wrong with a peer certificate, before it becomes a rustls or [`TlsError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CertProblem {
    Unparsable,
    TrailingData,
    NotEd25519Key,
    NotEd25519Signature,
    NotSelfIssued,
    BadSelfSignature,
}

impl CertProblem {
    fn reason(self) -> &'static str {
        match self {
            CertProblem::Unparsable => "not a der x.509 certificate",
            CertProblem::TrailingData => "trailing data after the certificate",
            CertProblem::NotEd25519Key => "the public key is not ed25519",
            CertProblem::NotEd25519Signature => "the signature algorithm is not ed25519",
            CertProblem::NotSelfIssued => "issuer differs from subject",
            CertProblem::BadSelfSignature => "the self-signature does not verify",
        }
    }

    fn into_rustls(self) -> rustls::Error {
        rustls::Error::InvalidCertificate(match self {
            CertProblem::BadSelfSignature => CertificateError::BadSignature,
            CertProblem::NotSelfIssued => CertificateError::UnknownIssuer,
            _ => CertificateError::BadEncoding,
        })
    }
}

/// The raw Ed25519 public key of a single self-signed certificate. Checks: DER parses with
/// nothing after it; the SubjectPublicKeyInfo is Ed25519 (RFC 8410: no parameters, 32 bytes);
/// the certificate is signed with Ed25519 by that same key over the same issuer/subject name.
///
/// Expiry and extensions are deliberately not checked: the certificate is only a carrier
/// for the key, and the TLS handshake signature proves possession of it.
fn ed25519_key_of(der: &[u8]) -> Result<[u8; 32], CertProblem> {
    let (rest, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|_| CertProblem::Unparsable)?;
    if !rest.is_empty() {
        return Err(CertProblem::TrailingData);
    }
    let spki = cert.tbs_certificate.public_key();
    if spki.algorithm.algorithm != OID_SIG_ED25519
        || spki.algorithm.parameters.is_some()
        || spki.subject_public_key.unused_bits != 0
    {
        return Err(CertProblem::NotEd25519Key);
    }
    let key: [u8; 32] = spki
        .subject_public_key
        .data
        .as_ref()
        .try_into()
        .map_err(|_| CertProblem::NotEd25519Key)?;
    if cert.signature_algorithm.algorithm != OID_SIG_ED25519
        || cert.tbs_certificate.signature.algorithm != OID_SIG_ED25519
    {
        return Err(CertProblem::NotEd25519Signature);
    }
    if cert.tbs_certificate.issuer.as_raw() != cert.tbs_certificate.subject.as_raw() {
        return Err(CertProblem::NotSelfIssued);
    }
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &key)
        .verify(
            cert.tbs_certificate.as_ref(),
            cert.signature_value.data.as_ref(),
        )
        .map_err(|_| CertProblem::BadSelfSignature)?;
    Ok(key)
}

/// Checks the presented chain: exactly one certificate, a valid self-signed Ed25519 one.
fn check_chain(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Result<[u8; 32], rustls::Error> {
    if !intermediates.is_empty() {
        // A chain means someone expects CA semantics; chaosnet has no CAs.
        return Err(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        ));
    }
    ed25519_key_of(end_entity).map_err(CertProblem::into_rustls)
}

/// The certificate verifier of both sides. As a server verifier (dialer side) it also
/// requires the certificate's key to equal the NodeId encoded in the server name.
#[derive(Debug)]
struct PeerVerifier {
    algorithms: WebPkiSupportedAlgorithms,
}

impl PeerVerifier {
    fn new(provider: &CryptoProvider) -> PeerVerifier {
        PeerVerifier {
            algorithms: provider.signature_verification_algorithms,
        }
    }

    fn tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Only Ed25519 is offered (see `schemes`), and the certificate was already checked to
        // hold an Ed25519 key; webpki checks that the scheme fits the key.
        if dss.scheme != SignatureScheme::ED25519 {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::BadSignature,
            ));
        }
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn tls12_refused() -> rustls::Error {
        // The configs enable TLS 1.3 only, so rustls never gets here; refuse regardless.
        rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls13RequiredForQuic)
    }

    fn schemes() -> Vec<SignatureScheme> {
        // Chaosnet certificates are Ed25519 only; offering other schemes would only invite
        // peers whose certificates we refuse anyway.
        vec![SignatureScheme::ED25519]
    }
}

/// The NodeId a dialer meant to reach, from the server name it passed to `connect`.
fn expected_node(name: &ServerName<'_>) -> Option<NodeId> {
    match name {
        ServerName::DnsName(dns) => NodeId::from_str(dns.as_ref()).ok(),
        _ => None,
    }
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let key = check_chain(end_entity, intermediates)?;
        match expected_node(name) {
            Some(expected) if expected.0 == key => Ok(ServerCertVerified::assertion()),
            // Sent as `bad_certificate`; classify_connection_error maps it to
            // IdentityMismatch. The context names both ids for the dialer's logs.
            _ => Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForNameContext {
                    expected: name.to_owned(),
                    presented: vec![server_name(&NodeId(key))],
                },
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(Self::tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        Self::schemes()
    }
}

impl ClientCertVerifier for PeerVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No CAs: the client just sends its own self-signed certificate.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Any valid key is acceptable here: the acceptor learns who dialed, it did not
        // choose whom to accept.
        check_chain(end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(Self::tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        Self::schemes()
    }
}

// ---------------------------------------------------------------------------------------------
// Private-network membership
// ---------------------------------------------------------------------------------------------

/// A pre-shared key of a private network.
///
/// `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct NetworkKey {
    /// The 32-byte shared secret.
    pub secret: [u8; 32],
    /// If set, the key is accepted up to and including this Unix time (seconds): the grace
    /// window of a key being rotated out. `None` = no expiry.
    pub not_after_unix: Option<u64>,
}

impl fmt::Debug for NetworkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetworkKey")
            .field("secret", &"<redacted>")
            .field("not_after_unix", &self.not_after_unix)
            .finish()
    }
}

impl NetworkKey {
    /// Whether the key is still accepted at `now_unix` (inclusive of `not_after_unix`).
    pub fn is_valid_at(&self, now_unix: u64) -> bool {
        self.not_after_unix.is_none_or(|t| now_unix <= t)
    }

    /// Reads a key file: one or more keys (at most [`MAX_PROOFS`]), each optionally followed
    /// by its expiry, so a file can be rotated in place (new key first, the old one with a
    /// `not-after`) and re-read while running:
    ///
    /// ```text
    /// # comments and blank lines are ignored; a comment may also end a line
    /// 0123...cdef              <- a key, 64 hex characters
    /// not-after: 1767225600    <- optional: accept the key above until then (Unix seconds)
    /// 4567...89ab              <- optional: another key, with its own optional not-after
    /// ```
    ///
    /// Errors name the file and line, never the line's content. Warns if the file is
    /// readable by group or others.
    pub fn load(path: &Path) -> Result<Vec<NetworkKey>, TlsError> {
        let read_err = |source| TlsError::KeyFileRead {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(read_err)?;
        let meta = file.metadata().map_err(read_err)?;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format_args!("{:o}", meta.permissions().mode() & 0o777),
                "network key file is readable by group or others; it should be mode 0600"
            );
        }
        let mut buf = Vec::new();
        file.take(MAX_KEY_FILE_BYTES + 1)
            .read_to_end(&mut buf)
            .map_err(read_err)?;
        let result = if buf.len() as u64 > MAX_KEY_FILE_BYTES {
            Err(KeyFileProblem::TooLarge)
        } else {
            match std::str::from_utf8(&buf) {
                Ok(text) => parse_key_file(text),
                Err(e) => Err(KeyFileProblem::Line {
                    line: line_of_offset(&buf, e.valid_up_to()),
                    reason: "not utf-8 text".to_string(),
                }),
            }
        };
        // The buffer held the secret in hex; don't leave it in freed memory.
        buf.fill(0);
        result.map_err(|p| match p {
            KeyFileProblem::Line { line, reason } => TlsError::KeyFileLine {
                path: path.to_path_buf(),
                line,
                reason,
            },
            KeyFileProblem::NoKey => TlsError::KeyFileNoKey {
                path: path.to_path_buf(),
            },
            KeyFileProblem::TooLarge => TlsError::KeyFileLine {
                path: path.to_path_buf(),
                line: 1,
                reason: format!("file is larger than {MAX_KEY_FILE_BYTES} bytes"),
            },
        })
    }
}

enum KeyFileProblem {
    Line { line: usize, reason: String },
    NoKey,
    TooLarge,
}

fn hex_key(content: &str) -> Result<[u8; 32], String> {
    if content.len() != 64 {
        return Err(format!(
            "expected a key as 64 hex characters, found {} characters",
            content.chars().count()
        ));
    }
    if let Some(pos) = content.bytes().position(|b| !b.is_ascii_hexdigit()) {
        return Err(format!(
            "expected a key as 64 hex characters, found a non-hex character at column {}",
            pos + 1
        ));
    }
    let mut key = [0u8; 32];
    hex::decode_to_slice(content, &mut key)
        .map_err(|_| "expected a key as 64 hex characters".to_string())?;
    Ok(key)
}

fn line_of_offset(buf: &[u8], offset: usize) -> usize {
    1 + buf[..offset.min(buf.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
}

fn parse_key_file(text: &str) -> Result<Vec<NetworkKey>, KeyFileProblem> {
    let mut keys: Vec<NetworkKey> = Vec::new();
    // Whether the last key already has its not-after.
    let mut dated = false;
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let bad = |reason: String| KeyFileProblem::Line { line, reason };
        let content = raw.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let Some((field, value)) = content.split_once(':') else {
            if keys.len() == MAX_PROOFS {
                return Err(bad(format!("more than {MAX_PROOFS} keys in one file")));
            }
            keys.push(NetworkKey {
                secret: hex_key(content).map_err(bad)?,
                not_after_unix: None,
            });
            dated = false;
            continue;
        };
        if field.trim() != "not-after" {
            return Err(bad(format!(
                "unknown field {:?}; only \"not-after\" is allowed",
                field.trim().chars().take(32).collect::<String>()
            )));
        }
        let Some(key) = keys.last_mut() else {
            return Err(bad("not-after comes before any key".to_string()));
        };
        if dated {
            return Err(bad("not-after is given twice for one key".to_string()));
        }
        let value = value.trim();
        let seconds = value.parse::<u64>().map_err(|_| {
            bad(format!(
                "not-after must be unix seconds (a non-negative integer), found {:?}",
                value.chars().take(32).collect::<String>()
            ))
        })?;
        key.not_after_unix = Some(seconds);
        dated = true;
    }
    if keys.is_empty() {
        return Err(KeyFileProblem::NoKey);
    }
    Ok(keys)
}

/// The message every proof authenticates: 32 bytes of TLS exporter output (label
/// [`MEMBERSHIP_LABEL`], context = the negotiated ALPN, i.e. the network) followed by the
/// prover's NodeId. Binding to the exporter ties the proof to this TLS session; binding to
/// the prover stops a peer from reflecting our own proof back at us.
fn proof_message(conn: &quinn::Connection, prover: &NodeId) -> Result<[u8; 64], TlsError> {
    let data = conn.handshake_data().ok_or(TlsError::NoAlpn)?;
    let data = data
        .downcast::<HandshakeData>()
        .map_err(|_| TlsError::NoAlpn)?;
    let alpn = data.protocol.ok_or(TlsError::NoAlpn)?;
    let mut msg = [0u8; 64];
    conn.export_keying_material(&mut msg[..32], MEMBERSHIP_LABEL, &alpn)
        .map_err(|_| TlsError::Exporter)?;
    msg[32..].copy_from_slice(&prover.0);
    Ok(msg)
}

/// The proof that `prover` (this node) holds `key`, for this connection:
/// HMAC-SHA256(key, exporter ‖ prover).
pub fn membership_proof(
    conn: &quinn::Connection,
    key: &NetworkKey,
    prover: &NodeId,
) -> Result<[u8; 32], TlsError> {
    let msg = proof_message(conn, prover)?;
    Ok(hmac_tag(key, &msg))
}

/// One proof per held key still valid at `now_unix`, current key first, at most
/// [`MAX_PROOFS`]: what a node sends. An expired key is never proven: the peer would refuse
/// it anyway, and the proof would only tell it which keys we once held.
pub fn membership_proofs(
    conn: &quinn::Connection,
    keys: &[NetworkKey],
    prover: &NodeId,
    now_unix: u64,
) -> Result<Vec<[u8; 32]>, TlsError> {
    let msg = proof_message(conn, prover)?;
    Ok(keys
        .iter()
        .filter(|k| k.is_valid_at(now_unix))
        .take(MAX_PROOFS)
        .map(|k| hmac_tag(k, &msg))
        .collect())
}

fn hmac_tag(key: &NetworkKey, msg: &[u8]) -> [u8; 32] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &key.secret), msg);
    let mut out = [0u8; 32];
    // HMAC-SHA256 tags are always 32 bytes, so the slice lengths match.
    out.copy_from_slice(tag.as_ref());
    out
}

/// Checks a peer's membership proofs for this connection. Accepts if any of the first
/// [`MAX_PROOFS`] proofs matches any of `keys` that is still valid at `now_unix`; compares
/// in constant time (`ring::hmac::verify`).
///
/// `prover` must be the peer's authenticated id ([`peer_node_id`]). No proofs →
/// [`Refusal::MissingProof`]; no match (or no usable exporter) → [`Refusal::BadKey`].
pub fn verify_membership(
    conn: &quinn::Connection,
    keys: &[NetworkKey],
    prover: &NodeId,
    proofs: &[[u8; 32]],
    now_unix: u64,
) -> Result<(), Refusal> {
    if proofs.is_empty() {
        return Err(Refusal::MissingProof);
    }
    let Ok(msg) = proof_message(conn, prover) else {
        // Without keying material nothing can be verified; refuse rather than accept.
        return Err(Refusal::BadKey);
    };
    for key in keys.iter().filter(|k| k.is_valid_at(now_unix)) {
        let hkey = hmac::Key::new(hmac::HMAC_SHA256, &key.secret);
        if proofs
            .iter()
            .take(MAX_PROOFS)
            .any(|p| hmac::verify(&hkey, &msg, p).is_ok())
        {
            return Ok(());
        }
    }
    Err(Refusal::BadKey)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::net::SocketAddr;

    use super::*;

    /// Guard against a hung handshake: fail the test instead of hanging CI. Not a timing
    /// assertion; a loopback handshake takes milliseconds.
    const GUARD: Duration = Duration::from_secs(20);

    struct Node {
        id: Identity,
        net: NetworkId,
    }

    impl Node {
        fn new(net: NetworkId) -> Node {
            Node {
                id: Identity::generate().unwrap(),
                net,
            }
        }
    }

    type Outcome = (
        Result<quinn::Connection, quinn::ConnectionError>,
        Result<quinn::Connection, quinn::ConnectionError>,
        quinn::Endpoint,
        quinn::Endpoint,
    );

    /// Dials `server` from `client`, expecting to reach `expected`; returns the dialer's and
    /// the acceptor's view, and the endpoints (kept alive so connections stay open).
    async fn dial(client: &Node, server: &Node, expected: &NodeId) -> Outcome {
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let server_ep =
            quinn::Endpoint::server(server_config(&server.id, &server.net).unwrap(), addr).unwrap();
        let mut client_ep = quinn::Endpoint::client(addr).unwrap();
        client_ep.set_default_client_config(client_config(&client.id, &client.net).unwrap());
        let server_addr = server_ep.local_addr().unwrap();
        let name = server_name(expected);
        let accept = async {
            let incoming = server_ep.accept().await.unwrap();
            incoming.await
        };
        let connect = async { client_ep.connect(server_addr, &name).unwrap().await };
        let (c, s) = tokio::time::timeout(GUARD, async { tokio::join!(connect, accept) })
            .await
            .unwrap();
        (c, s, client_ep, server_ep)
    }

    async fn connected(a: &Node, b: &Node) -> (quinn::Connection, quinn::Connection, Outcome) {
        let mut out = dial(a, b, &b.id.node_id()).await;
        let c = std::mem::replace(&mut out.0, Err(quinn::ConnectionError::LocallyClosed));
        let s = std::mem::replace(&mut out.1, Err(quinn::ConnectionError::LocallyClosed));
        (c.unwrap(), s.unwrap(), out)
    }

    fn key(byte: u8) -> NetworkKey {
        NetworkKey {
            secret: [byte; 32],
            not_after_unix: None,
        }
    }

    const NOW: u64 = 1_800_000_000;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn same_network_handshake_authenticates_both_sides() {
        let a = Node::new(NetworkId::Mainnet);
        let b = Node::new(NetworkId::Mainnet);
        let (ca, cb, _keep) = connected(&a, &b).await;
        assert_eq!(peer_node_id(&ca).unwrap(), b.id.node_id());
        assert_eq!(peer_node_id(&cb).unwrap(), a.id.node_id());
        // The negotiated ALPN is the network's.
        let hd = ca
            .handshake_data()
            .unwrap()
            .downcast::<HandshakeData>()
            .unwrap();
        assert_eq!(hd.protocol.unwrap(), b"chaosnet/1/mainnet".to_vec());
        // Data flows.
        let (mut send, mut recv) = ca.open_bi().await.unwrap();
        send.write_all(b"ping").await.unwrap();
        send.finish().unwrap();
        let (mut s2, mut r2) = cb.accept_bi().await.unwrap();
        assert_eq!(r2.read_to_end(64).await.unwrap(), b"ping");
        s2.write_all(b"pong").await.unwrap();
        s2.finish().unwrap();
        assert_eq!(recv.read_to_end(64).await.unwrap(), b"pong");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_client_config_dials_several_nodes() {
        let a = Node::new(NetworkId::Testnet);
        let b = Node::new(NetworkId::Testnet);
        let c = Node::new(NetworkId::Testnet);
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut client_ep = quinn::Endpoint::client(addr).unwrap();
        client_ep.set_default_client_config(client_config(&a.id, &a.net).unwrap());
        for target in [&b, &c] {
            let ep = quinn::Endpoint::server(server_config(&target.id, &target.net).unwrap(), addr)
                .unwrap();
            let to = ep.local_addr().unwrap();
            let name = server_name(&target.id.node_id());
            let (conn, _s) = tokio::time::timeout(GUARD, async {
                tokio::join!(
                    async { client_ep.connect(to, &name).unwrap().await.unwrap() },
                    async { ep.accept().await.unwrap().await.unwrap() }
                )
            })
            .await
            .unwrap();
            assert_eq!(peer_node_id(&conn).unwrap(), target.id.node_id());
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wrong_expected_node_id_is_identity_mismatch() {
        let a = Node::new(NetworkId::Mainnet);
        let b = Node::new(NetworkId::Mainnet);
        let someone_else = Identity::generate().unwrap().node_id();
        let (c, s, _ce, _se) = dial(&a, &b, &someone_else).await;
        let c = c.unwrap_err();
        let s = s.unwrap_err();
        eprintln!("dialer sees: {c:?}\nacceptor sees: {s:?}");
        assert_eq!(
            classify_connection_error(&c),
            Some(Refusal::IdentityMismatch)
        );
        assert_eq!(
            classify_connection_error(&s),
            Some(Refusal::IdentityMismatch)
        );
        // The dialer's own error is the TLS error raised locally, naming the expected id.
        assert!(
            matches!(c, quinn::ConnectionError::TransportError(_)),
            "{c:?}"
        );
        assert!(c.to_string().contains(&server_name(&someone_else)), "{c}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mainnet_and_testnet_refuse_each_other_as_wrong_network() {
        let a = Node::new(NetworkId::Mainnet);
        let b = Node::new(NetworkId::Testnet);
        let (c, s, _ce, _se) = dial(&a, &b, &b.id.node_id()).await;
        let c = c.unwrap_err();
        let s = s.unwrap_err();
        eprintln!("dialer sees: {c:?}\nacceptor sees: {s:?}");
        assert_eq!(classify_connection_error(&c), Some(Refusal::WrongNetwork));
        assert_eq!(classify_connection_error(&s), Some(Refusal::WrongNetwork));
        // The acceptor's TLS stack raised the alert; the dialer received it.
        assert!(
            matches!(s, quinn::ConnectionError::TransportError(_)),
            "{s:?}"
        );
        assert!(
            matches!(c, quinn::ConnectionError::ConnectionClosed(_)),
            "{c:?}"
        );

        // Two private networks are different networks too.
        let p = Node::new("private:lab-a".parse().unwrap());
        let q = Node::new("private:lab-b".parse().unwrap());
        let (c, s, _ce, _se) = dial(&p, &q, &q.id.node_id()).await;
        assert_eq!(
            classify_connection_error(&c.unwrap_err()),
            Some(Refusal::WrongNetwork)
        );
        assert_eq!(
            classify_connection_error(&s.unwrap_err()),
            Some(Refusal::WrongNetwork)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn private_network_proofs_verify_only_with_the_same_key() {
        let net: NetworkId = "private:lab".parse().unwrap();
        let a = Node::new(net.clone());
        let b = Node::new(net);
        let (ca, cb, _keep) = connected(&a, &b).await;
        let (ida, idb) = (a.id.node_id(), b.id.node_id());
        let k = key(1);

        // Same key, both directions (the verifier uses the authenticated peer id).
        let pa = membership_proof(&ca, &k, &ida).unwrap();
        let pb = membership_proof(&cb, &k, &idb).unwrap();
        assert_eq!(
            verify_membership(
                &cb,
                std::slice::from_ref(&k),
                &peer_node_id(&cb).unwrap(),
                &[pa],
                NOW
            ),
            Ok(())
        );
        assert_eq!(
            verify_membership(
                &ca,
                std::slice::from_ref(&k),
                &peer_node_id(&ca).unwrap(),
                &[pb],
                NOW
            ),
            Ok(())
        );

        // Different key: BadKey.
        let other = key(2);
        let pa_other = membership_proof(&ca, &other, &ida).unwrap();
        assert_eq!(
            verify_membership(&cb, std::slice::from_ref(&k), &ida, &[pa_other], NOW),
            Err(Refusal::BadKey)
        );
        // No proofs: MissingProof.
        assert_eq!(
            verify_membership(&cb, std::slice::from_ref(&k), &ida, &[], NOW),
            Err(Refusal::MissingProof)
        );
        // Reflection: B's own proof sent back as if from A does not verify as A's.
        assert_eq!(
            verify_membership(&ca, std::slice::from_ref(&k), &idb, &[pa], NOW),
            Err(Refusal::BadKey),
            "A's proof must not pass as B's"
        );
        assert_eq!(
            verify_membership(&cb, std::slice::from_ref(&k), &ida, &[pb], NOW),
            Err(Refusal::BadKey),
            "B's proof reflected to B must not pass as A's"
        );
        // A tampered proof fails.
        let mut bad = pa;
        bad[31] ^= 1;
        assert_eq!(
            verify_membership(&cb, &[k], &ida, &[bad], NOW),
            Err(Refusal::BadKey)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn key_rotation_interoperates_and_expired_keys_stop_verifying() {
        let net: NetworkId = "private:rot".parse().unwrap();
        let old = key(0x0d);
        let new = key(0x0e);
        let a_keys = vec![new.clone(), old.clone()];
        let b_keys = vec![old.clone()];
        let c_keys = vec![new.clone()];
        let a = Node::new(net.clone());
        let b = Node::new(net.clone());
        let c = Node::new(net);

        // Both directions between two nodes on one connection.
        let both_ways = |x: &quinn::Connection,
                         xk: &[NetworkKey],
                         xid: NodeId,
                         y: &quinn::Connection,
                         yk: &[NetworkKey],
                         yid: NodeId,
                         now: u64| {
            let px = membership_proofs(x, xk, &xid, now).unwrap();
            let py = membership_proofs(y, yk, &yid, now).unwrap();
            (
                verify_membership(y, yk, &xid, &px, now),
                verify_membership(x, xk, &yid, &py, now),
            )
        };

        let (ab_a, ab_b, _k1) = connected(&a, &b).await;
        assert_eq!(
            both_ways(
                &ab_a,
                &a_keys,
                a.id.node_id(),
                &ab_b,
                &b_keys,
                b.id.node_id(),
                NOW
            ),
            (Ok(()), Ok(()))
        );
        let (ac_a, ac_c, _k2) = connected(&a, &c).await;
        assert_eq!(
            both_ways(
                &ac_a,
                &a_keys,
                a.id.node_id(),
                &ac_c,
                &c_keys,
                c.id.node_id(),
                NOW
            ),
            (Ok(()), Ok(()))
        );
        let (bc_b, bc_c, _k3) = connected(&b, &c).await;
        assert_eq!(
            both_ways(
                &bc_b,
                &b_keys,
                b.id.node_id(),
                &bc_c,
                &c_keys,
                c.id.node_id(),
                NOW
            ),
            (Err(Refusal::BadKey), Err(Refusal::BadKey))
        );

        // The old key is being rotated out: accepted until NOW, not after.
        let old_expiring = NetworkKey {
            not_after_unix: Some(NOW),
            ..old.clone()
        };
        let a_keys_rotating = vec![new.clone(), old_expiring];
        // A proves the expiring key until it expires, and never after.
        let proofs = |now| {
            membership_proofs(&ab_a, &a_keys_rotating, &a.id.node_id(), now)
                .unwrap()
                .len()
        };
        assert_eq!((proofs(NOW), proofs(NOW + 1)), (2, 1));
        let pb = membership_proofs(&ab_b, &b_keys, &b.id.node_id(), NOW).unwrap();
        assert_eq!(
            verify_membership(&ab_a, &a_keys_rotating, &b.id.node_id(), &pb, NOW),
            Ok(()),
            "still inside the grace window"
        );
        assert_eq!(
            verify_membership(&ab_a, &a_keys_rotating, &b.id.node_id(), &pb, NOW + 1),
            Err(Refusal::BadKey),
            "grace window over"
        );
        // The new key is unaffected by the old one's expiry.
        let pc = membership_proofs(&ac_c, &c_keys, &c.id.node_id(), NOW).unwrap();
        assert_eq!(
            verify_membership(&ac_a, &a_keys_rotating, &c.id.node_id(), &pc, NOW + 1),
            Ok(())
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn proofs_are_bound_to_their_connection() {
        let net: NetworkId = "private:bind".parse().unwrap();
        let a = Node::new(net.clone());
        let b = Node::new(net);
        let k = key(7);
        let (c1a, c1b, _k1) = connected(&a, &b).await;
        let (c2a, c2b, _k2) = connected(&a, &b).await;
        let p1 = membership_proof(&c1a, &k, &a.id.node_id()).unwrap();
        let p2 = membership_proof(&c2a, &k, &a.id.node_id()).unwrap();
        assert_ne!(p1, p2);
        let keys = [k];
        assert_eq!(
            verify_membership(&c1b, &keys, &a.id.node_id(), &[p1], NOW),
            Ok(())
        );
        assert_eq!(
            verify_membership(&c2b, &keys, &a.id.node_id(), &[p1], NOW),
            Err(Refusal::BadKey)
        );
        assert_eq!(
            verify_membership(&c2b, &keys, &a.id.node_id(), &[p2], NOW),
            Ok(())
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refusal_close_codes_classify_on_the_other_side() {
        let a = Node::new(NetworkId::Mainnet);
        let b = Node::new(NetworkId::Mainnet);
        let (ca, cb, _keep) = connected(&a, &b).await;
        let r = Refusal::MissingProof;
        cb.close(r.close_code(), r.metric_label().as_bytes());
        let err = tokio::time::timeout(GUARD, ca.closed()).await.unwrap();
        assert!(
            matches!(err, quinn::ConnectionError::ApplicationClosed(_)),
            "{err:?}"
        );
        assert_eq!(classify_connection_error(&err), Some(r));
        for r in [
            Refusal::WrongNetwork,
            Refusal::BadKey,
            Refusal::IdentityMismatch,
            Refusal::MissingProof,
        ] {
            assert_eq!(Refusal::from_close_code(r.close_code()), Some(r));
        }
        assert_eq!(Refusal::from_close_code(VarInt::from_u32(0)), None);
        assert_eq!(
            classify_connection_error(&quinn::ConnectionError::TimedOut),
            None
        );
    }

    #[test]
    fn verifier_accepts_only_single_self_signed_ed25519_certs() {
        let id = Identity::generate().unwrap();
        let (cert, _) = certificate(&id).unwrap();
        assert_eq!(ed25519_key_of(&cert), Ok(id.node_id().0));

        // An ECDSA certificate (rcgen's default key type) is refused.
        let ec = rcgen::generate_simple_self_signed(vec!["x".to_string()]).unwrap();
        assert_eq!(
            ed25519_key_of(ec.cert.der()),
            Err(CertProblem::NotEd25519Key)
        );
        // Garbage, trailing bytes, a broken self-signature.
        assert_eq!(ed25519_key_of(b"nope"), Err(CertProblem::Unparsable));
        let mut trailing = cert.to_vec();
        trailing.push(0);
        assert_eq!(ed25519_key_of(&trailing), Err(CertProblem::TrailingData));
        let mut broken = cert.to_vec();
        let last = broken.len() - 1; // the signature is the last field
        broken[last] ^= 1;
        assert_eq!(ed25519_key_of(&broken), Err(CertProblem::BadSelfSignature));

        // Through the rustls interface: chains are refused, the name must match.
        let v = PeerVerifier::new(&rustls::crypto::ring::default_provider());
        let name = ServerName::try_from(server_name(&id.node_id())).unwrap();
        assert!(
            v.verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
                .is_ok()
        );
        assert!(
            v.verify_server_cert(
                &cert,
                std::slice::from_ref(&cert),
                &name,
                &[],
                UnixTime::now()
            )
            .is_err()
        );
        assert!(v.verify_client_cert(&cert, &[], UnixTime::now()).is_ok());
        let other =
            ServerName::try_from(server_name(&Identity::generate().unwrap().node_id())).unwrap();
        let err = v
            .verify_server_cert(&cert, &[], &other, &[], UnixTime::now())
            .unwrap_err();
        assert!(
            matches!(
                &err,
                rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. })
            ),
            "{err:?}"
        );
        let ip = ServerName::try_from("127.0.0.1").unwrap();
        assert!(
            v.verify_server_cert(&cert, &[], &ip, &[], UnixTime::now())
                .is_err()
        );
    }

    #[test]
    fn server_name_is_a_52_char_dns_label_that_round_trips() {
        let id = Identity::generate().unwrap().node_id();
        let name = server_name(&id);
        assert_eq!(name.len(), 52);
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
        );
        assert!(ServerName::try_from(name.clone()).is_ok());
        assert_eq!(name.parse::<NodeId>().unwrap(), id);
    }

    #[test]
    fn transport_config_values() {
        // TransportConfig has no getters; its Debug output shows the values.
        let dbg = format!("{:?}", transport_config());
        assert!(dbg.contains("keep_alive_interval: Some(5s)"), "{dbg}");
        assert!(dbg.contains("max_idle_timeout: Some(30000)"), "{dbg}");
        assert!(dbg.contains("max_concurrent_bidi_streams: 64"), "{dbg}");
        assert!(dbg.contains("max_concurrent_uni_streams: 8"), "{dbg}");
        const { assert!(KEEP_ALIVE_INTERVAL.as_secs() < 15) };
    }

    #[test]
    fn network_id_text_form_and_alpn() {
        for s in [
            "mainnet",
            "testnet",
            "private:a",
            "private:lab-1",
            &format!("private:{}", "z".repeat(32)),
        ] {
            let n: NetworkId = s.parse().unwrap();
            assert_eq!(n.to_string(), s);
            assert_eq!(n.alpn(), [b"chaosnet/1/".as_slice(), s.as_bytes()].concat());
        }
        assert!(!NetworkId::Mainnet.is_private());
        assert!(!NetworkId::Testnet.is_private());
        assert!(NetworkId::Private("x".into()).is_private());
    }

    #[test]
    fn network_id_parse_errors_name_the_problem() {
        let err = |s: &str| s.parse::<NetworkId>().unwrap_err();
        assert_eq!(
            err("Mainnet"),
            ParseNetworkIdError::Unknown("Mainnet".into())
        );
        assert!(
            err("devnet")
                .to_string()
                .contains("unknown network \"devnet\"")
        );
        assert_eq!(err("private:"), ParseNetworkIdError::EmptyName);
        assert!(err("private:").to_string().contains("empty"));
        assert_eq!(
            err(&format!("private:{}", "a".repeat(33))),
            ParseNetworkIdError::NameTooLong(33)
        );
        assert!(
            err(&format!("private:{}", "a".repeat(33)))
                .to_string()
                .contains("33 characters")
        );
        assert_eq!(
            err("private:Lab"),
            ParseNetworkIdError::BadNameChar { ch: 'L', pos: 0 }
        );
        assert_eq!(
            err("private:la_b"),
            ParseNetworkIdError::BadNameChar { ch: '_', pos: 2 }
        );
        assert!(
            err("private:la b")
                .to_string()
                .contains("' ' at position 2")
        );
        assert_eq!(
            err("private:é"),
            ParseNetworkIdError::BadNameChar { ch: 'é', pos: 0 }
        );
        // A hand-built invalid private network is refused when building configs.
        let id = Identity::generate().unwrap();
        let bad = NetworkId::Private("Not Valid".into());
        assert!(matches!(
            server_config(&id, &bad),
            Err(TlsError::Network(ParseNetworkIdError::BadNameChar { .. }))
        ));
        assert!(matches!(
            client_config(&id, &bad),
            Err(TlsError::Network(_))
        ));
    }

    fn load_keys_text(text: &str) -> Result<Vec<NetworkKey>, TlsError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("network.key");
        std::fs::write(&path, text).unwrap();
        NetworkKey::load(&path)
    }

    fn load_key_text(text: &str) -> Result<NetworkKey, TlsError> {
        let mut keys = load_keys_text(text)?;
        assert_eq!(keys.len(), 1, "one key expected");
        Ok(keys.remove(0))
    }

    const HEX: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn network_key_file_loads() {
        let k = load_key_text(&format!("{HEX}\n")).unwrap();
        assert_eq!(k.secret[1], 0x11);
        assert_eq!(k.not_after_unix, None);
        let k = load_key_text(&format!(
            "# lab network key\n\n  {} # current\nnot-after: 1767225600\n# end\n",
            HEX.to_uppercase()
        ))
        .unwrap();
        assert_eq!(k.secret[10], 0xaa);
        assert_eq!(k.not_after_unix, Some(1_767_225_600));
        assert!(k.is_valid_at(1_767_225_600));
        assert!(!k.is_valid_at(1_767_225_601));
        assert!(!format!("{k:?}").contains("aabb"));
    }

    #[test]
    fn a_key_file_rotates_in_place_with_one_expiry_per_key() {
        let new = HEX.replace('0', "f");
        let keys = load_keys_text(&format!(
            "# rotating: new first\n{new}\n{HEX}  # old\nnot-after: 1767225600\n"
        ))
        .unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].secret[0], 0xff);
        assert_eq!(keys[0].not_after_unix, None);
        assert_eq!(keys[1].secret[1], 0x11);
        assert_eq!(keys[1].not_after_unix, Some(1_767_225_600));
    }

    #[test]
    fn network_key_file_errors_name_file_and_line() {
        let msg = |text: &str| load_key_text(text).unwrap_err().to_string();

        let m = msg("# header\nabcd\n");
        assert!(m.contains("network.key, line 2"), "{m}");
        assert!(m.contains("found 4 characters"), "{m}");

        let secretish = format!("{}zz", &HEX[..62]);
        let m = msg(&format!("{secretish}\n"));
        assert!(
            m.contains("line 1") && m.contains("non-hex character at column 63"),
            "{m}"
        );
        assert!(!m.contains(&secretish[..20]), "must not echo the key: {m}");

        let m = msg(&format!("{HEX}\nnot-after: soon\n"));
        assert!(m.contains("line 2") && m.contains("unix seconds"), "{m}");
        let m = msg(&format!("{HEX}\nnot-after: -5\n"));
        assert!(m.contains("line 2") && m.contains("unix seconds"), "{m}");

        let m = msg(&format!("{HEX}\n\nnot-after: 1\nnot-after: 2\n"));
        assert!(m.contains("line 4") && m.contains("twice"), "{m}");
        let load_err = |text: &str| load_keys_text(text).unwrap_err().to_string();
        let m = load_err(&format!(
            "{HEX}\nnot-after: 1\n{HEX}\nnot-after: 2\nnot-after: 3\n"
        ));
        assert!(m.contains("line 5") && m.contains("twice"), "{m}");

        let m = msg(&format!("{HEX}\nexpires: 5\n"));
        assert!(
            m.contains("line 2") && m.contains("unknown field \"expires\""),
            "{m}"
        );

        // A bad second key is not silently ignored, and is not echoed.
        let m = msg(&format!("{HEX}\n{}\n", &HEX[1..]));
        assert!(m.contains("line 2") && !m.contains(&HEX[1..]), "{m}");
        let m = msg(&format!("not-after: 5\n{HEX}\n"));
        assert!(m.contains("line 1") && m.contains("before any key"), "{m}");
        let m = msg(&format!("{HEX}\n").repeat(MAX_PROOFS + 1));
        assert!(m.contains(&format!("line {}", MAX_PROOFS + 1)), "{m}");

        let m = msg("# only a comment\n\n");
        assert!(m.contains("has no key"), "{m}");

        let err = NetworkKey::load(Path::new("/nonexistent/chaosnet/network.key")).unwrap_err();
        assert!(matches!(err, TlsError::KeyFileRead { .. }));
        assert!(
            err.to_string()
                .contains("/nonexistent/chaosnet/network.key")
        );

        let mut bytes = format!("{HEX}\n").into_bytes();
        bytes.extend_from_slice(b"not-after: \xff\n");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("network.key");
        std::fs::write(&path, bytes).unwrap();
        let m = NetworkKey::load(&path).unwrap_err().to_string();
        assert!(m.contains("line 2") && m.contains("utf-8"), "{m}");
    }

    #[test]
    fn refusal_metric_labels() {
        assert_eq!(Refusal::WrongNetwork.metric_label(), "wrong_network");
        assert_eq!(Refusal::BadKey.metric_label(), "bad_key");
        assert_eq!(
            Refusal::IdentityMismatch.metric_label(),
            "identity_mismatch"
        );
        assert_eq!(Refusal::MissingProof.metric_label(), "missing_proof");
        assert_eq!(Refusal::NoValidKey.metric_label(), "no_valid_key");
        let code = Refusal::NoValidKey.close_code();
        assert_eq!(Refusal::from_close_code(code), Some(Refusal::NoValidKey));
    }
}
