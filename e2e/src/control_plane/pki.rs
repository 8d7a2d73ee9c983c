//! The control plane's certificates and keys (ECDSA P-256, made with rcgen): one CA that
//! signs the API server's serving certificate and every client certificate, and the key pair
//! that signs ServiceAccount tokens. Pure: PEM strings in, PEM strings out.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// The CA; kept whole (with its key) so tests can mint client certificates for any identity.
pub struct Ca {
    key: KeyPair,
    cert_pem: String,
}

/// A certificate and its private key, both PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The subject and extensions of the CA. Deterministic, so that [`Ca::from_pem`] can rebuild
/// the issuer of a running harness from its key alone (the issuer name and key identifier
/// method are all rcgen takes from it).
fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "realtime-e2e control plane CA");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

impl Ca {
    pub fn generate() -> Result<Self, rcgen::Error> {
        let key = KeyPair::generate()?;
        let cert_pem = ca_params().self_signed(&key)?.pem();
        Ok(Self { key, cert_pem })
    }

    /// The CA of an already running harness, from its files.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, rcgen::Error> {
        Ok(Self {
            key: KeyPair::from_pem(key_pem)?,
            cert_pem: cert_pem.to_string(),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    fn issue(&self, params: CertificateParams) -> Result<Issued, rcgen::Error> {
        let key = KeyPair::generate()?;
        let issuer = Issuer::new(ca_params(), &self.key);
        let cert = params.signed_by(&key, &issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The API server's serving certificate: valid for loopback, the in-cluster names and
    /// `ips` (its bind address and the `kubernetes` Service's ClusterIP).
    pub fn issue_serving(&self, ips: &[std::net::Ipv4Addr]) -> Result<Issued, rcgen::Error> {
        let mut names = vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "kubernetes".to_string(),
            "kubernetes.default".to_string(),
            "kubernetes.default.svc".to_string(),
            "kubernetes.default.svc.cluster.local".to_string(),
        ];
        for ip in ips {
            let ip = ip.to_string();
            if !names.contains(&ip) {
                names.push(ip);
            }
        }
        let mut p = CertificateParams::new(names)?;
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(p)
    }

    /// A client certificate: the API server takes the user name from CN and the group from O.
    /// rcgen writes one value per attribute type, so a certificate carries at most one group
    /// (bind roles to that group, or to the user).
    pub fn issue_client(&self, user: &str, group: Option<&str>) -> Result<Issued, rcgen::Error> {
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, user);
        if let Some(g) = group {
            p.distinguished_name.push(DnType::OrganizationName, g);
        }
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(p)
    }
}

/// The key pair that signs (private, PKCS#8) and verifies (public, SPKI) ServiceAccount tokens.
pub fn service_account_keys() -> Result<Issued, rcgen::Error> {
    let key = KeyPair::generate()?;
    Ok(Issued {
        cert_pem: key.public_key_pem(),
        key_pem: key.serialize_pem(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_pem_certificates_and_keys() {
        let ca = Ca::generate().unwrap();
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let serving = ca.issue_serving(&["10.0.0.1".parse().unwrap()]).unwrap();
        assert!(serving.cert_pem.contains("BEGIN CERTIFICATE"));
        assert!(serving.key_pem.contains("BEGIN PRIVATE KEY"));
        let client = ca.issue_client("alice", Some("team-a")).unwrap();
        assert_ne!(client.key_pem, serving.key_pem);
        let sa = service_account_keys().unwrap();
        assert!(sa.cert_pem.contains("BEGIN PUBLIC KEY"));
    }

    #[test]
    fn a_ca_rebuilt_from_its_files_still_signs() {
        let ca = Ca::generate().unwrap();
        let again = Ca::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(again.key_pem(), ca.key_pem());
        again.issue_client("bob", None).unwrap();
    }
}
