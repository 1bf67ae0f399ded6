//! Identity/Certify over loopback with the published client: a proxy-like CSR gets a leaf
//! for exactly its identity, chained to the trust anchors the way the proxy checks it
//! (rustls' webpki); the wrong identity, a malformed CSR and a missing token are refused.

mod support;

use std::time::{Duration, SystemTime};

use linkerd2_proxy_api::identity::{
    CertifyRequest, CertifyResponse, identity_client::IdentityClient,
};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject};
use support::TestServer;
use tonic::{Code, transport::Channel};
use x509_parser::{extensions::GeneralName, prelude::*};

const ID: &str = "web.shop.serviceaccount.identity.linkerd.cluster.local";

/// A key and CSR as a proxy's identity init makes them: P-256, CN and one DNS SAN.
fn proxy_csr(identity: &str) -> (KeyPair, Vec<u8>) {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, identity);
    params.subject_alt_names = vec![SanType::DnsName(identity.try_into().expect("dns name"))];
    let csr = params.serialize_request(&key).expect("csr").der().to_vec();
    (key, csr)
}

async fn client(srv: &TestServer) -> IdentityClient<Channel> {
    let channel = Channel::from_shared(format!("http://{}", srv.grpc))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    IdentityClient::new(channel)
}

async fn certify(
    srv: &TestServer,
    identity: &str,
    token: &[u8],
    csr: Vec<u8>,
) -> Result<CertifyResponse, tonic::Status> {
    let req = CertifyRequest {
        identity: identity.into(),
        token: token.to_vec(),
        certificate_signing_request: csr,
    };
    client(srv).await.certify(req).await.map(|r| r.into_inner())
}

/// Checks the leaf the way the proxy does: a chain to `anchors_pem` for server and client
/// use, valid for the identity's DNS name; and by parsing: exactly that one SAN, EKU
/// serverAuth and clientAuth, not a CA, `valid_until` its notAfter.
fn check_leaf(rsp: &CertifyResponse, anchors_pem: &[u8], identity: &str, key: &KeyPair) {
    let anchors: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(anchors_pem)
        .collect::<Result<_, _>>()
        .expect("anchors PEM");
    let anchors: Vec<_> = anchors
        .iter()
        .map(|a| {
            webpki::anchor_from_trusted_cert(a)
                .expect("anchor")
                .to_owned()
        })
        .collect();
    let intermediates: Vec<CertificateDer<'_>> = rsp
        .intermediate_certificates
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    let leaf_der = CertificateDer::from(rsp.leaf_certificate.as_slice());
    let leaf = webpki::EndEntityCert::try_from(&leaf_der).expect("leaf parses for webpki");
    for usage in [
        webpki::KeyUsage::server_auth(),
        webpki::KeyUsage::client_auth(),
    ] {
        leaf.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &intermediates,
            UnixTime::now(),
            usage,
            None,
            None,
        )
        .expect("the leaf chains to the trust anchors");
    }
    leaf.verify_is_valid_for_subject_name(&ServerName::try_from(identity).expect("name"))
        .expect("valid for the identity");

    let (_, cert) = X509Certificate::from_der(&rsp.leaf_certificate).expect("leaf parses");
    let san = cert
        .subject_alternative_name()
        .expect("SAN parses")
        .expect("a SAN");
    assert_eq!(
        san.value.general_names,
        vec![GeneralName::DNSName(identity)]
    );
    let eku = cert
        .extended_key_usage()
        .expect("EKU parses")
        .expect("an EKU");
    assert!(eku.value.server_auth && eku.value.client_auth, "{eku:?}");
    assert!(!cert.is_ca());
    assert_eq!(
        cert.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw(),
        "the leaf certifies the CSR's key"
    );
    let valid_until = rsp.valid_until.expect("valid_until");
    assert_eq!(
        valid_until.seconds,
        cert.validity().not_after.timestamp(),
        "valid_until is the leaf's notAfter"
    );
}

#[tokio::test]
async fn a_demo_ca_certifies_a_proxy_csr() {
    let anchors = tempfile::tempdir().expect("dir");
    let anchors_path = anchors.path().join("anchors.pem");
    let srv = TestServer::start_with(
        &[],
        &[
            "--identity-trust-anchors-out",
            anchors_path.to_str().expect("utf-8"),
            "--identity-cert-lifetime",
            "2h",
        ],
    )
    .await;
    let anchors_pem = std::fs::read(&anchors_path).expect("the trust anchor was written");
    let (key, csr) = proxy_csr(ID);
    let before = SystemTime::now();
    let rsp = certify(&srv, ID, b"a token", csr).await.expect("certified");
    check_leaf(&rsp, &anchors_pem, ID, &key);
    let valid_until = SystemTime::try_from(rsp.valid_until.expect("valid_until")).expect("time");
    let lifetime = valid_until.duration_since(before).expect("in the future");
    assert!(
        lifetime > Duration::from_secs(7190) && lifetime <= Duration::from_secs(7201),
        "--identity-cert-lifetime 2h gave {lifetime:?}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn wrong_identities_malformed_csrs_and_missing_tokens_are_refused() {
    let srv = TestServer::start(&[]).await;
    let expect = |r: Result<CertifyResponse, tonic::Status>, code: Code, says: &str| {
        let status = r.expect_err("refused");
        assert_eq!(status.code(), code, "{status:?}");
        assert!(
            status.message().contains(says),
            "{:?} should say {says:?}",
            status.message()
        );
    };

    // A CSR for another identity than the one asked for.
    let (_, other) = proxy_csr("db.shop.serviceaccount.identity.linkerd.cluster.local");
    expect(
        certify(&srv, ID, b"token", other).await,
        Code::FailedPrecondition,
        "not the requested identity",
    );
    // Not a CSR at all, and one whose signature was tampered with.
    expect(
        certify(&srv, ID, b"token", b"not a csr".to_vec()).await,
        Code::InvalidArgument,
        "not a DER PKCS#10 request",
    );
    let (_, mut tampered) = proxy_csr(ID);
    let last = tampered.len() - 1;
    tampered[last] ^= 0x55;
    expect(
        certify(&srv, ID, b"token", tampered).await,
        Code::InvalidArgument,
        "signature does not verify",
    );
    // A key on another curve.
    let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("key");
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::DnsName(ID.try_into().expect("dns"))];
    let csr = params.serialize_request(&p384).expect("csr").der().to_vec();
    expect(
        certify(&srv, ID, b"token", csr).await,
        Code::FailedPrecondition,
        "only ECDSA P-256",
    );
    // No token, and an identity of another trust domain (manifest mode checks the form).
    let (_, csr) = proxy_csr(ID);
    expect(
        certify(&srv, ID, b"", csr).await,
        Code::InvalidArgument,
        "no token",
    );
    let foreign = "web.shop.serviceaccount.identity.linkerd.example.org";
    let (_, csr) = proxy_csr(foreign);
    expect(
        certify(&srv, foreign, b"token", csr).await,
        Code::FailedPrecondition,
        "not an identity of this control plane",
    );
    srv.stop().await;
}

/// A root and an issuer it signed, as files `serve` is given.
struct IssuerFiles {
    dir: tempfile::TempDir,
    root_pem: String,
}

impl IssuerFiles {
    fn new() -> Self {
        let ca = |cn: &str, constraint| {
            let mut params = CertificateParams::default();
            params.distinguished_name = DistinguishedName::new();
            params.distinguished_name.push(DnType::CommonName, cn);
            params.is_ca = IsCa::Ca(constraint);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            params
        };
        let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        let root_params = ca(
            "root.linkerd.cluster.local",
            BasicConstraints::Unconstrained,
        );
        let root = root_params.self_signed(&root_key).expect("root");
        let issuer_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        let issuer = ca(
            "identity.linkerd.cluster.local",
            BasicConstraints::Constrained(0),
        )
        .signed_by(&issuer_key, &Issuer::from_params(&root_params, &root_key))
        .expect("issuer");
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("issuer.crt"), issuer.pem()).expect("write");
        std::fs::write(dir.path().join("issuer.key"), issuer_key.serialize_pem()).expect("write");
        std::fs::write(dir.path().join("roots.pem"), root.pem()).expect("write");
        Self {
            dir,
            root_pem: root.pem(),
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir
            .path()
            .join(name)
            .to_str()
            .expect("utf-8")
            .to_string()
    }
}

#[tokio::test]
async fn issuer_files_sign_leaves_chained_to_their_roots() {
    let files = IssuerFiles::new();
    let (cert, key, roots) = (
        files.path("issuer.crt"),
        files.path("issuer.key"),
        files.path("roots.pem"),
    );
    let srv = TestServer::start_with(
        &[],
        &[
            "--identity-issuer-cert",
            &cert,
            "--identity-issuer-key",
            &key,
            "--identity-trust-anchors",
            &roots,
        ],
    )
    .await;
    let (proxy_key, csr) = proxy_csr(ID);
    let rsp = certify(&srv, ID, b"token", csr).await.expect("certified");
    check_leaf(&rsp, files.root_pem.as_bytes(), ID, &proxy_key);
    assert_eq!(
        rsp.intermediate_certificates.len(),
        1,
        "the issuer goes with the leaf; the root does not"
    );
    srv.stop().await;
}

#[tokio::test]
async fn an_issuer_that_does_not_chain_to_the_anchors_stops_the_start() {
    let files = IssuerFiles::new();
    let other = IssuerFiles::new();
    let dir = tempfile::tempdir().expect("dir");
    std::fs::create_dir_all(dir.path().join("local")).expect("dir");
    let manifests = dir.path().to_str().expect("utf-8");
    let args = <meshlink::runtime::cli::ServeArgs as clap::Parser>::try_parse_from([
        "serve",
        "--manifests",
        manifests,
        "--grpc-addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
        "--identity-issuer-cert",
        &files.path("issuer.crt"),
        "--identity-issuer-key",
        &files.path("issuer.key"),
        "--identity-trust-anchors",
        &other.path("roots.pem"),
    ])
    .expect("flags parse");
    let err = meshlink::runtime::serve(args)
        .await
        .err()
        .expect("refuses to start");
    let text = format!("{err:#}");
    assert!(
        text.contains("does not chain to the trust anchors"),
        "the error says why: {text}"
    );
}
