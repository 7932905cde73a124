//! LiveKit-style access tokens: HS256 JWT, issuer = API key, with the video grant `roomRecord`.
//! This is exactly what livekit-api's `AccessToken` produces, so LiveKit tooling can call egret.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, Default)]
pub struct VideoGrant {
    #[serde(rename = "roomRecord", default)]
    pub room_record: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    #[serde(default)]
    pub sub: String,
    pub exp: u64,
    #[serde(default)]
    pub nbf: u64,
    #[serde(default)]
    pub video: VideoGrant,
}

#[derive(Debug, PartialEq)]
pub enum AuthError {
    /// No token, a malformed or wrongly signed one, an expired one: HTTP 401.
    Unauthenticated(String),
    /// A valid token without the roomRecord grant: HTTP 403.
    PermissionDenied(String),
}

#[derive(Clone)]
pub struct Verifier {
    api_key: String,
    decoding: DecodingKey,
    encoding: EncodingKey,
}

impl Verifier {
    pub fn new(api_key: &str, api_secret: &str) -> Self {
        Verifier {
            api_key: api_key.to_string(),
            decoding: DecodingKey::from_secret(api_secret.as_bytes()),
            encoding: EncodingKey::from_secret(api_secret.as_bytes()),
        }
    }

    /// Checks an `Authorization` header value.
    pub fn check_header(&self, header: Option<&str>) -> Result<Claims, AuthError> {
        let header = header.ok_or_else(|| AuthError::Unauthenticated("missing Authorization header".into()))?;
        let token = header
            .strip_prefix("Bearer ")
            .ok_or_else(|| AuthError::Unauthenticated("Authorization must be `Bearer <token>`".into()))?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[&self.api_key]);
        validation.set_required_spec_claims(&["exp", "iss"]);
        validation.validate_nbf = true;
        validation.leeway = 5;
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map_err(|e| AuthError::Unauthenticated(format!("invalid token: {e}")))?
            .claims;
        if !claims.video.room_record {
            return Err(AuthError::PermissionDenied("token lacks the roomRecord grant".into()));
        }
        Ok(claims)
    }

    /// A token for egret's own tools (quick start, bench): roomRecord, valid for `ttl_secs`.
    pub fn mint(&self, identity: &str, ttl_secs: u64) -> String {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let claims = Claims {
            iss: self.api_key.clone(),
            sub: identity.to_string(),
            exp: now + ttl_secs,
            nbf: now.saturating_sub(1),
            video: VideoGrant { room_record: true },
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).expect("HS256 encoding")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_token_passes_and_others_fail() {
        let v = Verifier::new("key", "secret");
        let token = v.mint("me", 60);
        assert!(v.check_header(Some(&format!("Bearer {token}"))).is_ok());
        let other = Verifier::new("key", "other-secret").mint("me", 60);
        assert!(matches!(v.check_header(Some(&format!("Bearer {other}"))), Err(AuthError::Unauthenticated(_))));
        assert!(matches!(v.check_header(None), Err(AuthError::Unauthenticated(_))));
        let wrong_issuer = Verifier::new("not-key", "secret").mint("me", 60);
        assert!(v.check_header(Some(&format!("Bearer {wrong_issuer}"))).is_err());
    }
}
