//! `pyreload schema`: the JSON Schema of the update spec.

use clap::Args;

use super::EXIT_OK;

/// Print the JSON Schema of the update spec, for editors and tools
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    pyreload schema > spec.schema.json\n\n\
    Editors with Taplo (e.g. VS Code's Even Better TOML) complete and check a spec whose first \
    line points at the schema:\n\n  \
    #:schema ./spec.schema.json\n\n\
    The repository keeps a copy in docs/spec.schema.json.")]
pub struct SchemaArgs {}

pub fn schema(_: SchemaArgs) -> i32 {
    println!(
        "{}",
        serde_json::to_string_pretty(&crate::spec::json_schema()).expect("schemas serialize")
    );
    EXIT_OK
}
