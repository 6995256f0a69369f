//! The certificates and keys of one throwaway control plane, generated in the test: a CA, the
//! API server's serving certificate for `127.0.0.1`/`localhost` signed by it, and the
//! ServiceAccount token signing key (ECDSA P-256, which kube-apiserver accepts for both
//! `--service-account-signing-key-file` and `--service-account-key-file`).

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// PEM texts written into the control plane's temp dir.
pub struct ControlPlaneCerts {
    pub ca_pem: String,
    pub serving_cert_pem: String,
    pub serving_key_pem: String,
    /// PKCS#8 private key signing ServiceAccount tokens.
    pub sa_key_pem: String,
    /// Its public key (SubjectPublicKeyInfo PEM), for verifying them.
    pub sa_pub_pem: String,
}

impl ControlPlaneCerts {
    pub fn generate() -> ControlPlaneCerts {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::default();
        ca.distinguished_name
            .push(DnType::CommonName, "silo-envtest-ca");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).expect("self-sign the CA");
        let issuer = Issuer::from_params(&ca, &ca_key);

        let serving_key = KeyPair::generate().expect("serving key");
        let mut serving =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .expect("serving SANs");
        serving
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        serving.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving_cert = serving
            .signed_by(&serving_key, &issuer)
            .expect("sign the serving certificate");

        let sa_key = KeyPair::generate().expect("ServiceAccount signing key");
        ControlPlaneCerts {
            ca_pem: ca_cert.pem(),
            serving_cert_pem: serving_cert.pem(),
            serving_key_pem: serving_key.serialize_pem(),
            sa_key_pem: sa_key.serialize_pem(),
            sa_pub_pem: sa_key.public_key_pem(),
        }
    }
}
