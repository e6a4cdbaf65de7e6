//! `podvisor-vmm`: one KVM micro-VM per process (see the VMM issue).

fn main() {
    println!("podvisor-vmm {}", env!("CARGO_PKG_VERSION"));
}
