//! The client's side of the handshake (PROTOCOL.md section 3): send
//! `hello`, check the server's proof before giving ours, wait for `welcome`.

use skiff_wire::message::handshake::{Auth, Challenge, Hello, Welcome};

use super::ClientError;
use crate::auth::handshake::{self as hs, Block};
use crate::keys::UserKey;
use crate::session::Session;

/// The client's side of the handshake on a fresh session.
pub async fn authenticate(
    session: &mut Session<'_>,
    key: &UserKey,
    cb: &Block,
) -> Result<Welcome, ClientError> {
    let cn = hs::nonce();
    session
        .send(
            &Hello {
                v: hs::VERSION,
                user: key.user.clone(),
                nonce: hs::b64(&cn),
            },
            &[],
        )
        .await?;
    let (challenge, _) = session.expect::<Challenge>().await?;
    let sn = hs::unb64(&challenge.nonce)
        .ok_or_else(|| ClientError::Auth("server sent a malformed challenge".into()))?;
    let server_proof = hs::proof_bytes(&challenge.proof);
    if !hs::verify(&key.key, hs::SERVER_LABEL, cb, &cn, &sn, &server_proof) {
        return Err(ClientError::Auth(format!(
            "the server could not prove it knows the key of user {:?} (wrong key, unknown user, or a man in the middle)",
            key.user
        )));
    }
    let proof = hs::proof(&key.key, hs::CLIENT_LABEL, cb, &cn, &sn);
    session
        .send(
            &Auth {
                proof: hs::b64(&proof),
            },
            &[],
        )
        .await?;
    let (welcome, _) = session.expect::<Welcome>().await?;
    Ok(welcome)
}
