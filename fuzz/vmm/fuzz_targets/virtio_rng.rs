#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| podvisor_vmm::fuzzing::virtio_rng(data));
