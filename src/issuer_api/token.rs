//! OAuth 2.0 client credentials for D1, and the bearer tokens checked on every call.
//!
//! D1 authenticates with `Authorization: Basic base64(clientId:clientSecret)`; both are compared
//! in constant time (over SHA-256 digests, so neither length leaks). Tokens are ES256 JWTs signed
//! with our key: `iss` [`TOKEN_ISSUER`], `aud` our issuer id, `scope`, `iat`, `exp`, `jti`. Time
//! is passed in, so expiry is tested without a clock.

use std::path::Path;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use josekit::jwt::JwtPayload;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::core::ids::IssuerId;
use crate::crypto::TokenKey;

/// `iss` of our tokens.
pub const TOKEN_ISSUER: &str = "card-registrar-issuer-api";
/// Scope of Get Consumer Info.
pub const SCOPE_CONSUMERS: &str = "consumers:read";
/// Scope of Notify Card Operations.
pub const SCOPE_NOTIFICATIONS: &str = "card-notifications:write";
/// Every scope, granted when the client asks for none.
pub const SCOPES: [&str; 2] = [SCOPE_CONSUMERS, SCOPE_NOTIFICATIONS];

/// The client id and secret given to D1. `Debug` shows neither.
pub struct ClientCredentials {
    id_digest: [u8; 32],
    secret_digest: [u8; 32],
}

/// A credential file is missing or empty.
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}", path.display())]
pub struct CredentialFileError {
    /// The file.
    pub path: std::path::PathBuf,
    /// What is wrong.
    pub problem: String,
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn read_secret(path: &Path) -> Result<Zeroizing<String>, CredentialFileError> {
    let err = |problem: String| CredentialFileError { path: path.to_owned(), problem };
    let text =
        Zeroizing::new(std::fs::read_to_string(path).map_err(|e| err(format!("cannot be read ({e})")))?);
    let value = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text);
    if value.is_empty() {
        return Err(err("is empty".into()));
    }
    Ok(Zeroizing::new(value.to_owned()))
}

impl ClientCredentials {
    /// From the id and secret themselves.
    pub fn new(id: &str, secret: &str) -> Self {
        Self { id_digest: digest(id.as_bytes()), secret_digest: digest(secret.as_bytes()) }
    }

    /// From the two files (one trailing newline ignored).
    pub fn from_files(id: &Path, secret: &Path) -> Result<Self, CredentialFileError> {
        Ok(Self::new(&read_secret(id)?, &read_secret(secret)?))
    }

    /// Whether an `Authorization` header carries these credentials (`Basic`), in constant time.
    pub fn accepts(&self, authorization: Option<&str>) -> bool {
        let Some((id, secret)) = authorization.and_then(parse_basic) else {
            return false;
        };
        // As sent, or form-decoded (RFC 6749 2.3.1): clients differ; both checks always run.
        let matches = |id: &str, secret: &str| {
            digest(id.as_bytes()).ct_eq(&self.id_digest)
                & digest(secret.as_bytes()).ct_eq(&self.secret_digest)
        };
        let (id_form, secret_form) = (form_decode(&id), form_decode(&secret));
        (matches(&id, &secret) | matches(&id_form, &secret_form)).into()
    }
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientCredentials([redacted])")
    }
}

/// `Basic base64(id:secret)` -> (id, secret) as sent.
fn parse_basic(header: &str) -> Option<(Zeroizing<String>, Zeroizing<String>)> {
    let (scheme, value) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") || value.len() > 1024 {
        return None;
    }
    let decoded = Zeroizing::new(STANDARD.decode(value.trim()).ok()?);
    let text = std::str::from_utf8(&decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    Some((Zeroizing::new(id.to_owned()), Zeroizing::new(secret.to_owned())))
}

/// `application/x-www-form-urlencoded` decoding of one value.
fn form_decode(s: &str) -> Zeroizing<String> {
    let bytes = Zeroizing::new(format!("x={s}").into_bytes());
    Zeroizing::new(
        url::form_urlencoded::parse(&bytes).next().map(|(_, v)| v.into_owned()).unwrap_or_default(),
    )
}

/// A token issued to D1.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    /// The compact JWT.
    pub access_token: String,
    /// Its lifetime.
    pub expires_in: Duration,
    /// When it expires.
    pub expires_at: SystemTime,
    /// Granted scopes, space-separated.
    pub scope: String,
}

/// Why a bearer token was refused: 401 for the token itself, 403 for what it may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    /// No `Authorization: Bearer` header.
    #[error("missing bearer token")]
    Missing,
    /// Not a token we signed (signature, algorithm, format).
    #[error("invalid bearer token")]
    Invalid,
    /// Past its `exp`.
    #[error("expired bearer token")]
    Expired,
    /// Signed by us but for another issuer id or issuer.
    #[error("bearer token not issued for this issuer")]
    WrongAudience,
    /// The token lacks the endpoint's scope.
    #[error("bearer token lacks the scope of this endpoint")]
    Scope,
}

/// Issues and checks access tokens.
#[derive(Debug)]
pub struct TokenAuthority {
    key: TokenKey,
    issuer_id: IssuerId,
    ttl: Duration,
}

/// The requested scope is not one we grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown scope requested")]
pub struct InvalidScope;

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl TokenAuthority {
    /// Tokens for `issuer_id`, signed with `key`, living `ttl`.
    pub fn new(key: TokenKey, issuer_id: IssuerId, ttl: Duration) -> Self {
        Self { key, issuer_id, ttl }
    }

    /// Issues a token at `now` for the requested scopes (space-separated; all when `None` or
    /// empty). `Ok(None)` only if signing failed.
    pub fn issue(
        &self,
        requested: Option<&str>,
        now: SystemTime,
    ) -> Result<Option<IssuedToken>, InvalidScope> {
        let asked: Vec<&str> = requested.unwrap_or_default().split_ascii_whitespace().collect();
        if asked.iter().any(|s| !SCOPES.contains(s)) {
            return Err(InvalidScope);
        }
        let granted: Vec<&str> = if asked.is_empty() {
            SCOPES.to_vec()
        } else {
            SCOPES.into_iter().filter(|s| asked.contains(s)).collect()
        };
        let scope = granted.join(" ");
        let iat = unix(now);
        let exp = iat + self.ttl.as_secs();
        let mut payload = JwtPayload::new();
        payload.set_issuer(TOKEN_ISSUER);
        payload.set_audience(vec![self.issuer_id.as_str()]);
        payload.set_jwt_id(uuid::Uuid::new_v4().to_string());
        let claims = [("iat", iat.into()), ("exp", exp.into()), ("scope", scope.clone().into())];
        for (name, value) in claims {
            if payload.set_claim(name, Some(value)).is_err() {
                return Ok(None);
            }
        }
        Ok(self.key.sign(&payload).map(|access_token| IssuedToken {
            access_token,
            expires_in: self.ttl,
            expires_at: SystemTime::UNIX_EPOCH + Duration::from_secs(exp),
            scope,
        }))
    }

    /// Checks the `Authorization` header at `now`: our signature, not expired, issued for our
    /// issuer id, and holding `scope`.
    pub fn check(
        &self,
        authorization: Option<&str>,
        scope: &str,
        now: SystemTime,
    ) -> Result<(), TokenRefusal> {
        let header = authorization.ok_or(TokenRefusal::Missing)?.trim();
        let token = match header.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => return Err(TokenRefusal::Missing),
        };
        // A token is a few hundred bytes; refuse anything large before parsing it.
        if token.len() > 4096 {
            return Err(TokenRefusal::Invalid);
        }
        let claims = self.key.verify(token).ok_or(TokenRefusal::Invalid)?;
        let exp = claims.claim("exp").and_then(|v| v.as_u64()).ok_or(TokenRefusal::Invalid)?;
        if unix(now) >= exp {
            return Err(TokenRefusal::Expired);
        }
        let audience_ok = claims.audience().is_some_and(|a| a.contains(&self.issuer_id.as_str()));
        if claims.issuer() != Some(TOKEN_ISSUER) || !audience_ok {
            return Err(TokenRefusal::WrongAudience);
        }
        let scopes = claims.claim("scope").and_then(|v| v.as_str()).unwrap_or_default();
        if !scopes.split_ascii_whitespace().any(|s| s == scope) {
            return Err(TokenRefusal::Scope);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authority(issuer: &str) -> TokenAuthority {
        let jwk = josekit::jwk::Jwk::generate_ec_key(josekit::jwk::alg::ec::EcCurve::P256).unwrap();
        let key = TokenKey::from_bytes(jwk.to_string().as_bytes()).unwrap();
        TokenAuthority::new(key, IssuerId::parse(issuer).unwrap(), Duration::from_secs(900))
    }

    fn bearer(t: &IssuedToken) -> String {
        format!("Bearer {}", t.access_token)
    }

    const T0: Duration = Duration::from_secs(1_790_000_000);

    #[test]
    fn a_token_is_accepted_until_it_expires_and_only_for_its_scopes() {
        let a = authority("ISSUER0001");
        let now = SystemTime::UNIX_EPOCH + T0;
        let all = a.issue(None, now).unwrap().unwrap();
        assert_eq!(all.scope, "consumers:read card-notifications:write");
        assert_eq!(all.expires_at, now + Duration::from_secs(900));
        let h = bearer(&all);
        assert_eq!(a.check(Some(&h), SCOPE_CONSUMERS, now + Duration::from_secs(899)), Ok(()));
        assert_eq!(
            a.check(Some(&h), SCOPE_CONSUMERS, now + Duration::from_secs(900)),
            Err(TokenRefusal::Expired)
        );
        let narrow = a.issue(Some("card-notifications:write"), now).unwrap().unwrap();
        assert_eq!(a.check(Some(&bearer(&narrow)), SCOPE_CONSUMERS, now), Err(TokenRefusal::Scope));
        assert_eq!(a.issue(Some("admin"), now).unwrap_err(), InvalidScope);
    }

    #[test]
    fn tokens_of_another_key_issuer_or_malformed_headers_are_refused() {
        let (a, b) = (authority("ISSUER0001"), authority("ISSUER0001"));
        let now = SystemTime::UNIX_EPOCH + T0;
        let theirs = bearer(&b.issue(None, now).unwrap().unwrap());
        assert_eq!(a.check(Some(&theirs), SCOPE_CONSUMERS, now), Err(TokenRefusal::Invalid));
        assert_eq!(a.check(None, SCOPE_CONSUMERS, now), Err(TokenRefusal::Missing));
        assert_eq!(a.check(Some("Basic abc"), SCOPE_CONSUMERS, now), Err(TokenRefusal::Missing));
        assert_eq!(a.check(Some("Bearer x.y.z"), SCOPE_CONSUMERS, now), Err(TokenRefusal::Invalid));
        let mine = a.issue(None, now).unwrap().unwrap().access_token;
        let (head, rest) = mine.split_once('.').unwrap();
        let tampered = format!("Bearer {head}.{}", rest.replacen(|_| true, "X", 1));
        assert_eq!(a.check(Some(&tampered), SCOPE_CONSUMERS, now), Err(TokenRefusal::Invalid));
        // Same key, other issuer id: signed by us but not for this issuer.
        let jwk = josekit::jwk::Jwk::generate_ec_key(josekit::jwk::alg::ec::EcCurve::P256).unwrap();
        let key = |_| TokenKey::from_bytes(jwk.to_string().as_bytes()).unwrap();
        let one = TokenAuthority::new(key(()), IssuerId::parse("ISSUER0001").unwrap(), T0);
        let two = TokenAuthority::new(key(()), IssuerId::parse("ISSUER0002").unwrap(), T0);
        let other = bearer(&two.issue(None, now).unwrap().unwrap());
        assert_eq!(one.check(Some(&other), SCOPE_CONSUMERS, now), Err(TokenRefusal::WrongAudience));
    }

    #[test]
    fn basic_credentials_must_match_both_parts() {
        let c = ClientCredentials::new("d1-client", "s3cret:with colon");
        let basic = |s: &str| format!("Basic {}", STANDARD.encode(s));
        assert!(c.accepts(Some(&basic("d1-client:s3cret:with colon"))));
        assert!(c.accepts(Some(&basic("d1-client:s3cret%3Awith+colon"))));
        assert!(!c.accepts(Some(&basic("d1-client:s3cret"))));
        assert!(!c.accepts(Some(&basic("other:s3cret:with colon"))));
        assert!(!c.accepts(Some("Basic !!!")));
        assert!(!c.accepts(Some("Bearer x")));
        assert!(!c.accepts(None));
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
