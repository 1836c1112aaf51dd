//! Tokens signed with the test key, and TLS certificates made by the test.

use serde_json::Value;

/// The HS256 key the test hubs are started with.
pub const KEY: &str = "test-secret-key-of-a-decent-length";

/// Writes a CA certificate named `name`, and a certificate for 127.0.0.1 signed by it with
/// its key, into `dir`; returns their paths (ca, cert, key).
pub fn test_certificates(dir: &std::path::Path, name: &str) -> [std::path::PathBuf; 3] {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, name);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    let server_cert = server.signed_by(&server_key, &issuer).unwrap();
    let paths = [
        dir.join(format!("{name}-ca.pem")),
        dir.join(format!("{name}-server.pem")),
        dir.join(format!("{name}-server.key")),
    ];
    std::fs::write(&paths[0], ca_cert.pem()).unwrap();
    std::fs::write(&paths[1], server_cert.pem()).unwrap();
    std::fs::write(&paths[2], server_key.serialize_pem()).unwrap();
    paths
}

/// Mints an HS256 token with the given claims.
pub fn token(claims: Value) -> String {
    token_with(KEY, claims)
}

/// Mints an HS256 token with the given claims, signed with `key`.
pub fn token_with(key: &str, claims: Value) -> String {
    let claims: tidings::auth::Claims = serde_json::from_value(claims).unwrap();
    tidings::auth::mint(tidings::auth::JwtAlg::Hs256, key, &claims).unwrap()
}

/// Seconds since the Unix epoch, plus `offset`.
pub fn unix_time(offset: i64) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    now + offset
}

pub fn publisher_token() -> String {
    token(serde_json::json!({"mercure": {"publish": ["*"]}}))
}
