//! `schemas/NAME.json` must be exactly what `cogrs schema NAME` prints: the committed documents
//! are what Replicate reads from the image label, so drift fails CI.
//! `UPDATE_SCHEMAS=1 cargo test -p cog-predictors --test schemas` rewrites them after a review.

use std::path::PathBuf;

#[test]
fn committed_schemas_match_the_predictors() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas");
    let registry = cog_predictors::registry();
    let update = std::env::var_os("UPDATE_SCHEMAS").is_some();
    for name in registry.names() {
        let def = registry.get(name).unwrap();
        let generated = serde_json::to_string_pretty(&def.schema.document).unwrap() + "\n";
        let path = dir.join(format!("{name}.json"));
        if update {
            std::fs::write(&path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(&path)
            .unwrap_or_else(|_| panic!("{} is missing; run UPDATE_SCHEMAS=1", path.display()));
        assert_eq!(
            generated,
            committed,
            "{name}: schema drifted from {}",
            path.display()
        );
    }
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            assert!(
                registry.get(&stem).is_some(),
                "{} has no predictor: remove it or register the predictor",
                path.display()
            );
        }
    }
}
