//! The certificate authority: an issuer certificate and key that sign proxies' leaves.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber,
    SignatureAlgorithm,
};
use ring::rand::SecureRandom;
use time::OffsetDateTime;
use x509_parser::{certificate::X509Certificate, pem::Pem, prelude::FromDer};

use super::CheckedCsr;

/// How far back a leaf's validity starts, so a proxy whose clock is a little behind
/// accepts it at once (Linkerd allows the same).
pub const CLOCK_SKEW: Duration = Duration::from_secs(10);

/// How long a generated demo CA is valid.
const DEMO_CA_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// Why a CA cannot be set up, or cannot sign.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{what} holds no PEM CERTIFICATE block")]
    NoCertificate { what: &'static str },
    #[error("{what} is not valid PEM: {reason}")]
    Pem { what: &'static str, reason: String },
    #[error("certificate {index} of {what} does not parse: {reason}")]
    Certificate {
        what: &'static str,
        index: usize,
        reason: String,
    },
    #[error(
        "the issuer key is not a PEM PKCS#8 private key (\"BEGIN PRIVATE KEY\") of a supported kind ({0}); \
         an \"EC PRIVATE KEY\" converts with `openssl pkcs8 -topk8 -nocrypt -in key.pem`"
    )]
    Key(String),
    #[error("the issuer key is not the key of the issuer certificate")]
    KeyMismatch,
    #[error("the issuer certificate is not a CA certificate (basicConstraints CA:TRUE)")]
    NotCa,
    #[error("the issuer certificate is not valid now (valid from {not_before} until {not_after})")]
    NotValidNow {
        not_before: String,
        not_after: String,
    },
    #[error("the issuer certificate does not chain to the trust anchors: {0}")]
    Chain(String),
    #[error("cannot sign the certificate: {0}")]
    Sign(String),
}

/// A signed leaf and what the proxy needs with it.
#[derive(Clone, Debug)]
pub struct IssuedCert {
    /// The DER leaf certificate.
    pub leaf: Vec<u8>,
    /// DER certificates from the leaf's issuer up to a trust anchor (anchors left out).
    pub intermediates: Vec<Vec<u8>>,
    /// The leaf's notAfter.
    pub valid_until: SystemTime,
}

/// A CA generated for a demo, and the trust anchor to hand to proxies.
pub struct DemoCa {
    /// The issuer, signed by the anchor.
    pub ca: Ca,
    /// The generated root certificate, PEM.
    pub trust_anchors_pem: String,
}

/// Signs leaves for checked CSRs.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// The issuer and its intermediates (DER), minus any trust anchor.
    intermediates: Vec<Vec<u8>>,
    /// No leaf outlives its issuer.
    issuer_not_after: SystemTime,
    lifetime: Duration,
    /// The issuer's subject, for logs.
    subject: String,
}

/// A CSR's P-256 key, as rcgen signs for it.
struct CsrKey<'a>(&'a [u8]);

impl PublicKeyData for CsrKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

impl Ca {
    /// A CA from an issuer certificate (PEM; certificates after the first are its
    /// intermediates), its key (PEM PKCS#8) and the trust anchors (PEM) it must chain to.
    pub fn from_pem(
        issuer_pem: &str,
        key_pem: &str,
        anchors_pem: &str,
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<Self, CaError> {
        let chain = pem_certificates(issuer_pem, "the issuer certificate file")?;
        let anchors = pem_certificates(anchors_pem, "the trust anchors file")?;
        let parsed_chain = parse_all(&chain, "the issuer certificate file")?;
        let parsed_anchors = parse_all(&anchors, "the trust anchors file")?;
        let issuer = &parsed_chain[0];

        let key = KeyPair::from_pem(key_pem).map_err(|e| CaError::Key(e.to_string()))?;
        if key.public_key_raw() != issuer.public_key().subject_public_key.data.as_ref() {
            return Err(CaError::KeyMismatch);
        }
        let is_ca = issuer
            .basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err(CaError::NotCa);
        }
        let validity = issuer.validity();
        let not_before = to_system_time(validity.not_before.timestamp());
        let issuer_not_after = to_system_time(validity.not_after.timestamp());
        if now < not_before || now >= issuer_not_after {
            return Err(CaError::NotValidNow {
                not_before: validity.not_before.to_string(),
                not_after: validity.not_after.to_string(),
            });
        }
        verify_chain(&parsed_chain, &parsed_anchors).map_err(CaError::Chain)?;
        let subject = issuer.subject().to_string();
        let intermediates = chain
            .iter()
            .filter(|der| !anchors.contains(der))
            .cloned()
            .collect();
        let issuer = Issuer::from_ca_cert_der(&chain[0].as_slice().into(), key)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        Ok(Self {
            issuer,
            intermediates,
            issuer_not_after,
            lifetime,
            subject,
        })
    }

    /// A fresh root and an issuer it signed, both P-256, named like Linkerd's
    /// (`root.<ns>.<trust domain>`, `identity.<ns>.<trust domain>`). For demos: a new one
    /// is made on every start.
    pub fn generate_demo(
        control_plane_ns: &str,
        trust_domain: &str,
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<DemoCa, CaError> {
        let sign = |e: rcgen::Error| CaError::Sign(e.to_string());
        let not_before = OffsetDateTime::from(now - CLOCK_SKEW);
        let not_after = OffsetDateTime::from(now + DEMO_CA_LIFETIME);
        let ca_params = |cn: String, constraint: BasicConstraints| {
            let mut params = CertificateParams::default();
            params.distinguished_name = DistinguishedName::new();
            params.distinguished_name.push(DnType::CommonName, cn);
            params.is_ca = IsCa::Ca(constraint);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            params.not_before = not_before;
            params.not_after = not_after;
            params
        };
        let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(sign)?;
        let mut root_params = ca_params(
            format!("root.{control_plane_ns}.{trust_domain}"),
            BasicConstraints::Unconstrained,
        );
        root_params.serial_number = Some(random_serial()?);
        let root = root_params.self_signed(&root_key).map_err(sign)?;

        let issuer_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(sign)?;
        let mut issuer_params = ca_params(
            format!("identity.{control_plane_ns}.{trust_domain}"),
            BasicConstraints::Constrained(0),
        );
        issuer_params.serial_number = Some(random_serial()?);
        issuer_params.use_authority_key_identifier_extension = true;
        let issuer_cert = issuer_params
            .signed_by(&issuer_key, &Issuer::from_params(&root_params, &root_key))
            .map_err(sign)?;
        let subject = format!("CN=identity.{control_plane_ns}.{trust_domain}");
        Ok(DemoCa {
            ca: Self {
                issuer: Issuer::new(issuer_params, issuer_key),
                intermediates: vec![issuer_cert.der().to_vec()],
                issuer_not_after: now + DEMO_CA_LIFETIME,
                lifetime,
                subject,
            },
            trust_anchors_pem: root.pem(),
        })
    }

    /// How long the leaves it signs are valid (unless the issuer expires first).
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// The issuer's subject name.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// When the issuer certificate expires.
    pub fn issuer_not_after(&self) -> SystemTime {
        self.issuer_not_after
    }

    /// Signs a leaf for `csr`: its identity as the one DNS SAN and the common name, EKU
    /// serverAuth and clientAuth, valid from a little before `now` for the lifetime.
    pub fn issue(&self, csr: &CheckedCsr, now: SystemTime) -> Result<IssuedCert, CaError> {
        let sign = |e: rcgen::Error| CaError::Sign(e.to_string());
        let valid_until = (now + self.lifetime).min(self.issuer_not_after);
        if valid_until <= now {
            return Err(CaError::Sign("the issuer certificate has expired".into()));
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, csr.identity.as_str());
        let name = csr.identity.clone().try_into().map_err(sign)?;
        params.subject_alt_names = vec![SanType::DnsName(name)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        params.not_before = OffsetDateTime::from(now - CLOCK_SKEW);
        params.not_after = OffsetDateTime::from(valid_until);
        let leaf = params
            .signed_by(&CsrKey(&csr.public_key), &self.issuer)
            .map_err(sign)?;
        Ok(IssuedCert {
            leaf: leaf.der().to_vec(),
            intermediates: self.intermediates.clone(),
            // Certificates carry whole seconds.
            valid_until: to_system_time(OffsetDateTime::from(valid_until).unix_timestamp()),
        })
    }
}

/// A random positive 128-bit serial number: a renewed leaf for the same key gets a new one.
fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CaError::Sign("no randomness for a serial number".into()))?;
    // The top bit clear keeps the DER integer positive at this length.
    bytes[0] &= 0x7f;
    Ok(SerialNumber::from_slice(&bytes))
}

fn to_system_time(unix: i64) -> SystemTime {
    match u64::try_from(unix) {
        Ok(secs) => UNIX_EPOCH + Duration::from_secs(secs),
        Err(_) => UNIX_EPOCH,
    }
}

/// The DER of every CERTIFICATE block in `pem`, in order.
fn pem_certificates(pem: &str, what: &'static str) -> Result<Vec<Vec<u8>>, CaError> {
    let mut certs = Vec::new();
    for block in Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|e| CaError::Pem {
            what,
            reason: e.to_string(),
        })?;
        if block.label == "CERTIFICATE" {
            certs.push(block.contents);
        }
    }
    if certs.is_empty() {
        return Err(CaError::NoCertificate { what });
    }
    Ok(certs)
}

fn parse_all<'a>(
    ders: &'a [Vec<u8>],
    what: &'static str,
) -> Result<Vec<X509Certificate<'a>>, CaError> {
    ders.iter()
        .enumerate()
        .map(|(index, der)| {
            X509Certificate::from_der(der)
                .map(|(_, cert)| cert)
                .map_err(|e| CaError::Certificate {
                    what,
                    index: index + 1,
                    reason: e.to_string(),
                })
        })
        .collect()
}

/// Each certificate of `chain` is signed by the next, and the last is an anchor or is
/// signed by one.
fn verify_chain(
    chain: &[X509Certificate<'_>],
    anchors: &[X509Certificate<'_>],
) -> Result<(), String> {
    for pair in chain.windows(2) {
        pair[0]
            .verify_signature(Some(pair[1].public_key()))
            .map_err(|_| {
                format!(
                    "{} is not signed by {}, the certificate after it",
                    pair[0].subject(),
                    pair[1].subject()
                )
            })?;
    }
    let Some(last) = chain.last() else {
        return Err("no certificate".into());
    };
    let anchored = anchors.iter().any(|anchor| {
        anchor.tbs_certificate.as_ref() == last.tbs_certificate.as_ref()
            || (anchor.subject() == last.issuer()
                && last.verify_signature(Some(anchor.public_key())).is_ok())
    });
    if anchored {
        Ok(())
    } else {
        Err(format!(
            "no trust anchor signed {} (issued by {})",
            last.subject(),
            last.issuer()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "web.shop.serviceaccount.identity.linkerd.cluster.local";

    fn checked_csr() -> CheckedCsr {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        CheckedCsr {
            identity: ID.into(),
            public_key: key.public_key_raw().to_vec(),
        }
    }

    fn to_pem(der: &[u8]) -> String {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|l| std::str::from_utf8(l).unwrap())
            .collect();
        format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            lines.join("\n")
        )
    }

    #[test]
    fn a_demo_ca_signs_leaves_that_chain_to_its_anchor() {
        let now = SystemTime::now();
        let demo =
            Ca::generate_demo("linkerd", "cluster.local", Duration::from_secs(3600), now).unwrap();
        let issued = demo.ca.issue(&checked_csr(), now).unwrap();
        let (_, leaf) = X509Certificate::from_der(&issued.leaf).unwrap();
        let (_, issuer) = X509Certificate::from_der(&issued.intermediates[0]).unwrap();
        leaf.verify_signature(Some(issuer.public_key())).unwrap();
        let anchors = pem_certificates(&demo.trust_anchors_pem, "anchors").unwrap();
        let (_, root) = X509Certificate::from_der(&anchors[0]).unwrap();
        issuer.verify_signature(Some(root.public_key())).unwrap();
        let lifetime = issued.valid_until.duration_since(now).unwrap();
        assert!(lifetime <= Duration::from_secs(3600) && lifetime > Duration::from_secs(3590));
    }

    #[test]
    fn issuer_files_are_checked_against_the_key_and_the_anchors() {
        let now = SystemTime::now();
        let demo =
            Ca::generate_demo("linkerd", "cluster.local", Duration::from_secs(3600), now).unwrap();
        let issuer_pem = to_pem(&demo.ca.intermediates[0]);
        let key_pem = demo.ca.issuer.key().serialize_pem();
        let ca = Ca::from_pem(
            &issuer_pem,
            &key_pem,
            &demo.trust_anchors_pem,
            Duration::from_secs(60),
            now,
        )
        .unwrap();
        let issued = ca.issue(&checked_csr(), now).unwrap();
        assert_eq!(issued.intermediates, demo.ca.intermediates);

        let other =
            Ca::generate_demo("linkerd", "cluster.local", Duration::from_secs(60), now).unwrap();
        let err = Ca::from_pem(
            &issuer_pem,
            &key_pem,
            &other.trust_anchors_pem,
            Duration::from_secs(60),
            now,
        )
        .err()
        .unwrap();
        assert!(matches!(err, CaError::Chain(_)), "{err}");
        let err = Ca::from_pem(
            &issuer_pem,
            &other.ca.issuer.key().serialize_pem(),
            &demo.trust_anchors_pem,
            Duration::from_secs(60),
            now,
        )
        .err()
        .unwrap();
        assert!(matches!(err, CaError::KeyMismatch), "{err}");
        let err = Ca::from_pem("", &key_pem, &demo.trust_anchors_pem, Duration::ZERO, now)
            .err()
            .unwrap();
        assert!(matches!(err, CaError::NoCertificate { .. }), "{err}");
    }
}
