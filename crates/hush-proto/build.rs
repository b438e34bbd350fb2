//! Compiles proto/*.proto with protox (pure Rust), so a fresh machine needs
//! nothing but cargo.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto");
    let files = [
        format!("{root}/hush/v1/client.proto"),
        format!("{root}/hush/cluster/v1/cluster.proto"),
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(&files, [root])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
