//! The JSON Schemas under docs/schemas/ are generated from the spec types.
//! This test fails when they are stale; regenerate them with
//! `WEAVSTER_UPDATE_SCHEMAS=1 cargo test -p weavster-spec --test schemas`.

use std::path::Path;

#[test]
fn schemas_are_up_to_date() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/schemas");
    let update = std::env::var_os("WEAVSTER_UPDATE_SCHEMAS").is_some();
    let mut stale = Vec::new();
    for (name, schema) in weavster_spec::types::schemas() {
        let text = serde_json::to_string_pretty(&schema).expect("schema serializes") + "\n";
        let path = dir.join(name);
        if update {
            std::fs::create_dir_all(&dir).expect("create docs/schemas");
            std::fs::write(&path, &text).expect("write schema");
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            stale.push(name);
        }
    }
    assert!(
        stale.is_empty(),
        "stale JSON Schemas {stale:?}: run `WEAVSTER_UPDATE_SCHEMAS=1 cargo test -p weavster-spec --test schemas`"
    );
}
