//! The API fuzzed against its own OpenAPI document (issue 9): schemathesis
//! (pinned, installed into target/schemathesis-venv by the script) runs
//! against a real `mall serve` as an admin and as a shopper, bounded in
//! examples and time. It fails on any 5xx, any error that is not the JSON
//! error shape, any status an operation does not document, and any body
//! that breaks its schema. See scripts/schemathesis.sh.

use std::process::Command;

#[test]
fn the_api_keeps_its_openapi_contract_under_schemathesis() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new("bash")
        .arg(root.join("scripts/schemathesis.sh"))
        .env("MALL_BIN", env!("CARGO_BIN_EXE_mall"))
        .env("ST_MAX_EXAMPLES", "25")
        .env("ST_TIME_LIMIT", "90")
        .output()
        .expect("run scripts/schemathesis.sh (needs bash and python3)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "schemathesis found failures:\n{text}");
}
