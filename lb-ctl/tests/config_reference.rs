//! The config reference documents every field the reader accepts.

#[test]
fn every_config_field_is_in_the_reference() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/config.md"))
        .expect("docs/config.md");
    let missing: Vec<String> = lb_ctl::config::field_paths()
        .into_iter()
        .filter(|path| !doc.contains(&format!("`{path}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/config.md does not document these config fields (as `path`): {missing:?}"
    );
}

#[test]
fn the_reference_example_is_a_valid_config() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/config.md"))
        .expect("docs/config.md");
    let start = doc.find("```yaml\n").expect("an example") + "```yaml\n".len();
    let end = start + doc[start..].find("```").expect("end of the example");
    let config = lb_ctl::config::parse(&doc[start..end])
        .unwrap_or_else(|e| panic!("the example in docs/config.md is invalid:\n{e}"));
    assert_eq!(config.listeners.len(), 3);
}
