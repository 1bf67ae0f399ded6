//! A proxy's certificate signing request, checked before anything is signed.

use x509_parser::{
    certification_request::X509CertificationRequest,
    extensions::{GeneralName, ParsedExtension},
    oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY},
    prelude::FromDer,
};

/// Why a CSR is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("the certificate signing request is not a DER PKCS#10 request: {0}")]
    Malformed(String),
    #[error("the certificate signing request's signature does not verify with its own key")]
    BadSignature,
    #[error("the CSR's key is {0}; only ECDSA P-256 keys are certified")]
    KeyType(String),
    #[error("the CSR must name exactly one DNS name (the identity); it names {0}")]
    DnsNameCount(usize),
    #[error("the CSR names {found}, not the requested identity {requested}")]
    NameMismatch { found: String, requested: String },
    #[error("the CSR's common name {0} is not the requested identity")]
    CommonName(String),
    #[error("the CSR asks for {0} names; only one DNS name (the identity) is certified")]
    OtherName(&'static str),
}

impl CsrError {
    /// Whether the request could not even be read (as opposed to asking for the wrong thing).
    pub fn is_malformed(&self) -> bool {
        matches!(self, Self::Malformed(_) | Self::BadSignature)
    }
}

/// A CSR that passed every check: its key may be certified as `identity`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedCsr {
    /// The identity it asks for (its one DNS name).
    pub identity: String,
    /// The P-256 public key, as the uncompressed point the CSR carries.
    pub public_key: Vec<u8>,
}

/// Checks `der` the way Linkerd's identity service does, and more: a PKCS#10 request
/// signed by its own ECDSA P-256 key, whose only name is the DNS name `identity` (a common
/// name, if any, must be the same).
pub fn check_csr(der: &[u8], identity: &str) -> Result<CheckedCsr, CsrError> {
    let (rest, csr) =
        X509CertificationRequest::from_der(der).map_err(|e| CsrError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CsrError::Malformed(format!(
            "{} bytes follow the request",
            rest.len()
        )));
    }
    let info = &csr.certification_request_info;
    let spki = &info.subject_pki;
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY || curve != Some(OID_EC_P256) {
        let kind = match curve {
            Some(curve) if spki.algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY => {
                format!("an elliptic-curve key on curve {curve}")
            }
            _ => format!("of algorithm {}", spki.algorithm.algorithm),
        };
        return Err(CsrError::KeyType(kind));
    }
    csr.verify_signature().map_err(|_| CsrError::BadSignature)?;

    let mut dns_names = Vec::new();
    for ext in csr.requested_extensions().into_iter().flatten() {
        let ParsedExtension::SubjectAlternativeName(san) = ext else {
            continue;
        };
        for name in &san.general_names {
            match name {
                GeneralName::DNSName(n) => dns_names.push(*n),
                GeneralName::IPAddress(_) => return Err(CsrError::OtherName("IP address")),
                GeneralName::URI(_) => return Err(CsrError::OtherName("URI")),
                GeneralName::RFC822Name(_) => return Err(CsrError::OtherName("email")),
                _ => return Err(CsrError::OtherName("other")),
            }
        }
    }
    match dns_names.as_slice() {
        [name] if *name == identity => {}
        [name] => {
            return Err(CsrError::NameMismatch {
                found: crate::model::quote_prefix(name),
                requested: crate::model::quote_prefix(identity),
            });
        }
        names => return Err(CsrError::DnsNameCount(names.len())),
    }
    for cn in info.subject.iter_common_name() {
        let cn = cn.as_str().unwrap_or_default();
        if cn != identity {
            return Err(CsrError::CommonName(crate::model::quote_prefix(cn)));
        }
    }
    Ok(CheckedCsr {
        identity: identity.to_string(),
        public_key: spki.subject_public_key.data.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};

    fn csr_for(names: &[SanType], cn: Option<&str>, key: &KeyPair) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params.subject_alt_names = names.to_vec();
        params.serialize_request(key).unwrap().der().to_vec()
    }

    const ID: &str = "web.shop.serviceaccount.identity.linkerd.cluster.local";

    fn dns(name: &str) -> SanType {
        SanType::DnsName(name.try_into().unwrap())
    }

    #[test]
    fn a_p256_request_for_the_identity_passes() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let checked = check_csr(&csr_for(&[dns(ID)], Some(ID), &key), ID).unwrap();
        assert_eq!(checked.identity, ID);
        assert_eq!(checked.public_key, key.public_key_raw());
        // No common name is fine too.
        assert!(check_csr(&csr_for(&[dns(ID)], None, &key), ID).is_ok());
    }

    #[test]
    fn names_other_than_the_identity_are_refused() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let other = "db.shop.serviceaccount.identity.linkerd.cluster.local";
        assert!(matches!(
            check_csr(&csr_for(&[dns(other)], None, &key), ID),
            Err(CsrError::NameMismatch { .. })
        ));
        assert_eq!(
            check_csr(&csr_for(&[dns(ID), dns(other)], None, &key), ID),
            Err(CsrError::DnsNameCount(2))
        );
        assert_eq!(
            check_csr(&csr_for(&[], None, &key), ID),
            Err(CsrError::DnsNameCount(0))
        );
        assert!(matches!(
            check_csr(&csr_for(&[dns(ID)], Some(other), &key), ID),
            Err(CsrError::CommonName(_))
        ));
        let ip = SanType::IpAddress("10.0.0.1".parse().unwrap());
        assert_eq!(
            check_csr(&csr_for(&[dns(ID), ip], None, &key), ID),
            Err(CsrError::OtherName("IP address"))
        );
    }

    #[test]
    fn other_keys_bad_signatures_and_garbage_are_refused() {
        let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let err = check_csr(&csr_for(&[dns(ID)], None, &p384), ID).unwrap_err();
        assert!(matches!(err, CsrError::KeyType(_)), "{err}");
        assert!(!err.is_malformed());

        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut der = csr_for(&[dns(ID)], None, &key);
        // The last byte is inside the signature.
        let last = der.len() - 1;
        der[last] ^= 0x55;
        let err = check_csr(&der, ID).unwrap_err();
        assert!(err.is_malformed(), "{err}");

        for garbage in [&b""[..], b"not a csr", &der[..der.len() / 2]] {
            let err = check_csr(garbage, ID).unwrap_err();
            assert!(matches!(err, CsrError::Malformed(_)), "{err}");
        }
    }
}
