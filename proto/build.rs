fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc keeps `cargo build` free of a system protobuf install.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    tonic_prost_build::configure().compile_protos(&["agent.proto"], &["."])?;
    println!("cargo:rerun-if-changed=agent.proto");
    Ok(())
}
