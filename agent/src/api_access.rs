//! Who may reach the control API. A bearer token ([`token`], [`require_token`]): with one,
//! every route answers 401 unless the request carries `Authorization: Bearer <token>`. A unix
//! socket made mode 0600 from the start ([`bind_private_socket`]), replacing only a stale
//! socket at its path ([`clear_stale_socket`]). Which addresses need a token is the command
//! line's decision; the routes themselves are [`crate::api`]'s.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};

use crate::api::error;

/// Why the API cannot be offered as asked. Messages name paths, never the token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccessError {
    /// The token file cannot be read.
    #[error("cannot read --api-token-file {}: {source}", path.display())]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The token is too short or has spaces.
    #[error(
        "the API token must be at least {MIN_API_TOKEN_LEN} characters without spaces (it is \
         {0} characters)"
    )]
    BadToken(usize),
    /// Something other than a socket is at the socket's path.
    #[error("--api unix:{}: the path exists and is not a socket; it is left alone", .0.display())]
    NotASocket(PathBuf),
    /// A process serves on the socket at the path.
    #[error("--api unix:{}: another process is serving on this socket", .0.display())]
    SocketInUse(PathBuf),
    /// The path or socket cannot be inspected, removed, bound or made private.
    #[error("--api unix:{}: cannot {what}: {source}", path.display())]
    Socket {
        /// The socket's path.
        path: PathBuf,
        /// What failed.
        what: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Shortest API token accepted: 16 characters, so it cannot be guessed in a few tries.
pub const MIN_API_TOKEN_LEN: usize = 16;

/// The API token given inline (`--api-token`) or as a file whose first line it is
/// (`--api-token-file`), if any.
pub fn token(inline: Option<&str>, file: Option<&Path>) -> Result<Option<String>, AccessError> {
    let token = match (inline, file) {
        (Some(t), _) => t.trim().to_string(),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|source| AccessError::TokenFile {
                path: path.to_path_buf(),
                source,
            })?;
            text.lines().next().unwrap_or("").trim().to_string()
        }
        (None, None) => return Ok(None),
    };
    let len = token.chars().count();
    if len < MIN_API_TOKEN_LEN || token.chars().any(char::is_whitespace) {
        return Err(AccessError::BadToken(len));
    }
    Ok(Some(token))
}

fn socket_error(path: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> AccessError {
    let path = path.to_path_buf();
    move |source| AccessError::Socket { path, what, source }
}

/// Makes `path` free for the API socket: nothing there, or a stale socket (no process
/// accepts on it), which is removed. Anything else (a regular file, a directory, a socket
/// someone listens on) is refused and left alone.
pub fn clear_stale_socket(path: &Path) -> Result<(), AccessError> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(socket_error(path, "inspect the path")(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(AccessError::NotASocket(path.to_path_buf()));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(AccessError::SocketInUse(path.to_path_buf())),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            std::fs::remove_file(path).map_err(socket_error(path, "remove the stale socket"))?;
            tracing::info!(path = %path.display(), "removed a stale API socket");
            Ok(())
        }
        Err(e) => Err(socket_error(path, "tell whether the socket there is stale")(e)),
    }
}

/// Binds the API socket at `path` with mode 0600 from the start: the umask is narrowed
/// around the bind, so there is no moment at which others may connect.
pub fn bind_private_socket(path: &Path) -> Result<tokio::net::UnixListener, AccessError> {
    use nix::sys::stat::{Mode, umask};
    use std::os::unix::fs::PermissionsExt;
    let old = umask(Mode::from_bits_truncate(0o177));
    let bound = tokio::net::UnixListener::bind(path);
    umask(old);
    let l = bound.map_err(socket_error(path, "listen"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(socket_error(path, "make it mode 0600"))?;
    Ok(l)
}

/// `router` with every route behind `token`: a request without `Authorization: Bearer
/// <token>` gets 401 and reaches no handler.
pub fn require_token(router: Router, token: &str) -> Router {
    // Requests are checked by digest, so comparing takes the same time wherever a wrong
    // token first differs.
    let expected = Arc::new(token_digest(token.as_bytes()));
    router.layer(middleware::from_fn(
        move |req: axum::extract::Request, next: Next| {
            let expected = expected.clone();
            async move {
                let given = req
                    .headers()
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
                    .map(token_digest);
                if given.as_ref() == Some(&*expected) {
                    next.run(req).await
                } else {
                    let mut r = error(
                        StatusCode::UNAUTHORIZED,
                        "unauthorized",
                        "this control API needs Authorization: Bearer <token>",
                    );
                    r.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        header::HeaderValue::from_static("Bearer"),
                    );
                    r
                }
            }
        },
    ))
}

fn token_digest(token: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token);
    let mut out = [0u8; 32];
    // SHA-256 digests are 32 bytes.
    out.copy_from_slice(d.as_ref());
    out
}
