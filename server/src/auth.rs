//! Handshake authentication: an HS256 JWT in socket.io's `auth: {token}`.
//!
//! The token's `sub` claim is the user id: the socket joins that user's internal room, so
//! `send {user}` reaches every socket of the user on every node. `exp` is required, so a
//! leaked token does not work forever.

use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::Deserialize;

/// Longest accepted `sub`: it becomes part of a room name kept on every node.
pub const MAX_SUBJECT_BYTES: usize = 256;

/// Checks tokens against one shared secret.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier(HS256)")
    }
}

/// Why a handshake was refused. The text reaches the client as the `connect_error` message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("authentication required: connect with auth: {{ token: \"<JWT>\" }}")]
    MissingToken,
    #[error("invalid token: it has expired")]
    Expired,
    #[error("invalid token: it is not valid yet (nbf)")]
    NotYetValid,
    #[error("invalid token: bad signature")]
    BadSignature,
    #[error("invalid token: only HS256 is accepted")]
    WrongAlgorithm,
    #[error("invalid token: the `{0}` claim is missing")]
    MissingClaim(String),
    #[error("invalid token: `sub` (the user id) must be a non-empty string of at most 256 bytes")]
    BadSubject,
    #[error("invalid token: not a well-formed JWT")]
    Malformed,
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<serde_json::Value>,
}

/// The handshake `auth` payload the client sends (`io(url, {auth: {token}})`).
#[derive(Debug, Default, Deserialize)]
pub struct HandshakeAuth {
    #[serde(default)]
    pub token: Option<serde_json::Value>,
}

impl Verifier {
    pub fn new(secret: &[u8]) -> Self {
        // Pin the provider: if another crate in the build enabled a second jsonwebtoken backend,
        // automatic selection would panic at the first token instead.
        let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_nbf = true;
        Self {
            key: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Verifies the handshake payload and returns the user id (`sub`).
    pub fn verify_handshake(&self, auth: Option<&HandshakeAuth>) -> Result<String, AuthError> {
        let token = match auth.and_then(|a| a.token.as_ref()) {
            Some(serde_json::Value::String(t)) if !t.is_empty() => t,
            Some(serde_json::Value::String(_)) | None | Some(serde_json::Value::Null) => {
                return Err(AuthError::MissingToken);
            }
            Some(_) => return Err(AuthError::Malformed),
        };
        self.verify(token)
    }

    /// Verifies one token and returns its `sub`.
    pub fn verify(&self, token: &str) -> Result<String, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |e| match e.into_kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::InvalidAlgorithm => AuthError::WrongAlgorithm,
                // jsonwebtoken reports a missing, empty or non-string `sub` alike
                ErrorKind::MissingRequiredClaim(c) if c == "sub" => AuthError::BadSubject,
                ErrorKind::MissingRequiredClaim(c) => AuthError::MissingClaim(c),
                ErrorKind::InvalidClaimFormat(c) if c == "sub" => AuthError::BadSubject,
                _ => AuthError::Malformed,
            },
        )?;
        match data.claims.sub {
            Some(serde_json::Value::String(s)) if !s.is_empty() && s.len() <= MAX_SUBJECT_BYTES => {
                Ok(s)
            }
            _ => Err(AuthError::BadSubject),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    pub const SECRET: &[u8] = b"test-secret-0123456789";

    pub fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    /// A token signed with `secret` carrying `claims`.
    pub fn token_with(alg: Algorithm, secret: &[u8], claims: serde_json::Value) -> String {
        let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
        encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    pub fn token(sub: &str) -> String {
        token_with(
            Algorithm::HS256,
            SECRET,
            json!({"sub": sub, "exp": now() + 600}),
        )
    }

    fn verify(claims: serde_json::Value) -> Result<String, AuthError> {
        Verifier::new(SECRET).verify(&token_with(Algorithm::HS256, SECRET, claims))
    }

    #[test]
    fn valid_token_yields_the_subject() {
        assert_eq!(
            Verifier::new(SECRET).verify(&token("alice")),
            Ok("alice".into())
        );
    }

    #[test]
    fn expired_and_immature_tokens_are_refused() {
        // jsonwebtoken's default leeway is 60s
        assert_eq!(
            verify(json!({"sub": "a", "exp": now() - 3600})),
            Err(AuthError::Expired)
        );
        assert_eq!(
            verify(json!({"sub": "a", "exp": now() + 3600, "nbf": now() + 1800})),
            Err(AuthError::NotYetValid)
        );
    }

    #[test]
    fn required_claims() {
        assert_eq!(
            verify(json!({"sub": "a"})),
            Err(AuthError::MissingClaim("exp".into()))
        );
        assert_eq!(
            verify(json!({"exp": now() + 60})),
            Err(AuthError::BadSubject)
        );
        assert_eq!(
            verify(json!({"sub": 42, "exp": now() + 60})),
            Err(AuthError::BadSubject)
        );
        assert_eq!(
            verify(json!({"sub": "", "exp": now() + 60})),
            Err(AuthError::BadSubject)
        );
        assert_eq!(
            verify(json!({"sub": "x".repeat(257), "exp": now() + 60})),
            Err(AuthError::BadSubject)
        );
    }

    #[test]
    fn wrong_secret_or_algorithm_is_refused() {
        let other = token_with(
            Algorithm::HS256,
            b"another-secret-0123456789",
            json!({"sub": "a", "exp": now() + 60}),
        );
        assert_eq!(
            Verifier::new(SECRET).verify(&other),
            Err(AuthError::BadSignature)
        );
        let hs512 = token_with(
            Algorithm::HS512,
            SECRET,
            json!({"sub": "a", "exp": now() + 60}),
        );
        assert_eq!(
            Verifier::new(SECRET).verify(&hs512),
            Err(AuthError::WrongAlgorithm)
        );
        // alg "none" with an empty signature
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhIiwiZXhwIjo5OTk5OTk5OTk5fQ.";
        assert!(Verifier::new(SECRET).verify(none).is_err());
        assert_eq!(
            Verifier::new(SECRET).verify("not-a-jwt"),
            Err(AuthError::Malformed)
        );
    }

    #[test]
    fn handshake_payload_shapes() {
        let v = Verifier::new(SECRET);
        assert_eq!(v.verify_handshake(None), Err(AuthError::MissingToken));
        let empty = HandshakeAuth::default();
        assert_eq!(
            v.verify_handshake(Some(&empty)),
            Err(AuthError::MissingToken)
        );
        let num = HandshakeAuth {
            token: Some(json!(5)),
        };
        assert_eq!(v.verify_handshake(Some(&num)), Err(AuthError::Malformed));
        let ok = HandshakeAuth {
            token: Some(json!(token("bob"))),
        };
        assert_eq!(v.verify_handshake(Some(&ok)), Ok("bob".into()));
        assert!(
            AuthError::MissingToken
                .to_string()
                .contains("auth: { token")
        );
    }
}
