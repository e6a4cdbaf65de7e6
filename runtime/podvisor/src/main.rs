//! `podvisor`: the CRI daemon. The services arrive with the CRI daemon issue;
//! until then the binary only reports its version.

fn main() {
    println!("podvisor {}", env!("CARGO_PKG_VERSION"));
}
