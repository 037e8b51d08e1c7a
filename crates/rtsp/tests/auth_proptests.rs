//! Property tests for RTSP authentication: robustness of the parsers and
//! client/server round trips.

use proptest::prelude::*;
use sluice_rtsp::auth::{
    digest_ha1, format_challenge, parse_authorization, parse_www_authenticate, verify_basic,
    verify_digest, Challenge, ClientAuth, Credentials, DigestAlgorithm, Secret,
};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn arb_algorithm() -> impl Strategy<Value = DigestAlgorithm> {
    prop_oneof![
        Just(DigestAlgorithm::Md5),
        Just(DigestAlgorithm::Md5Sess),
        Just(DigestAlgorithm::Sha256),
        Just(DigestAlgorithm::Sha256Sess),
    ]
}

fn arb_challenge() -> impl Strategy<Value = Challenge> {
    let text = "[ -~]{0,24}";
    prop_oneof![
        text.prop_map(|realm| Challenge::Basic { realm }),
        (
            text,
            "[!#-~]{1,24}",
            proptest::option::of(text),
            arb_algorithm(),
            prop_oneof![
                Just(vec![]),
                Just(vec!["auth".to_string()]),
                Just(vec!["auth".to_string(), "auth-int".to_string()])
            ],
            any::<bool>()
        )
            .prop_map(
                |(realm, nonce, opaque, algorithm, qop, stale)| Challenge::Digest {
                    realm,
                    nonce,
                    opaque,
                    algorithm,
                    qop,
                    stale
                }
            ),
    ]
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn parsers_never_panic(s in "\\PC{0,120}") {
        let _ = parse_www_authenticate(&s);
        let _ = parse_authorization(&s);
    }

    #[test]
    fn parsers_never_panic_on_header_like_input(
        s in r#"(Digest|Basic|digest|,| |=|"|\\|realm|nonce|qop|auth|algorithm|MD5|SHA-256|stale|true|[a-z0-9]{1,4}){0,30}"#
    ) {
        let _ = parse_www_authenticate(&s);
        if let Ok(a) = parse_authorization(&s) {
            let _ = verify_digest(&a, "GET", Secret::Password("x"));
            let _ = verify_digest(&a, "GET", Secret::Ha1("zz"));
        }
    }

    #[test]
    fn format_challenge_round_trips(c in arb_challenge()) {
        let s = format_challenge(&c);
        prop_assert_eq!(parse_www_authenticate(&s), Ok(vec![c]));
    }

    #[test]
    fn several_challenges_in_one_header(a in arb_challenge(), b in arb_challenge()) {
        let s = format!("{}, {}", format_challenge(&a), format_challenge(&b));
        prop_assert_eq!(parse_www_authenticate(&s), Ok(vec![a, b]));
    }

    #[test]
    fn client_authorization_verifies_on_server(
        c in arb_challenge(),
        // RFC 7617: a Basic user-id cannot contain ':'.
        username in "[ -9;-~]{0,16}",
        password in "[ -~]{0,16}",
        method in "[A-Z_]{1,13}",
        uri in "rtsp://[a-z.]{1,10}/[!#-~]{0,20}",
    ) {
        let creds = Credentials { username: username.clone(), password: password.clone() };
        let mut auth = ClientAuth::new(creds, std::slice::from_ref(&c)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        for _ in 0..2 {
            let header = auth.authorization(&method, &uri);
            let parsed = parse_authorization(&header).map_err(|e| TestCaseError::fail(format!("{e}: {header}")))?;
            match &c {
                Challenge::Basic { .. } => {
                    prop_assert!(verify_basic(&parsed, &username, &password));
                }
                Challenge::Digest { realm, algorithm, .. } => {
                    prop_assert!(verify_digest(&parsed, &method, Secret::Password(&password)), "{}", header);
                    let ha1 = digest_ha1(*algorithm, &username, realm, &password);
                    prop_assert!(verify_digest(&parsed, &method, Secret::Ha1(&ha1)));
                    let wrong = format!("{password}x");
                    prop_assert!(!verify_digest(&parsed, &method, Secret::Password(&wrong)));
                    let other_method = format!("{method}X");
                    prop_assert!(!verify_digest(&parsed, &other_method, Secret::Password(&password)));
                }
            }
        }
    }
}
