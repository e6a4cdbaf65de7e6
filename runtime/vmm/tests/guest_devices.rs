//! One boot of the test guest through the 64-bit Linux boot path checks the
//! zero page and drives every virtio device by polling: rng, two block
//! devices (rw and read-only), vsock in both directions through the hybrid
//! unix socket, and net on a tap inside a network namespace made here.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::netns::{NetNs, PacketSocket};
use common::*;

const GUEST_MAC: [u8; 6] = [0x02, 0x50, 0x44, 0x56, 0x53, 0x01];
const HOST_MAC: [u8; 6] = [0x02, 0x50, 0x44, 0x56, 0x53, 0x99];
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];

fn make_disk(path: &Path, size: usize, sector: usize, text: &[u8]) {
    let mut data = vec![0u8; size];
    data[sector * 512..sector * 512 + text.len()].copy_from_slice(text);
    std::fs::write(path, data).unwrap();
}

/// Host side of the host-initiated vsock connection.
fn vsock_host_client(socket: &Path) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut stream = loop {
        match UnixStream::connect(socket) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("connect: {e}")),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream
        .write_all(b"CONNECT 1234\n")
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .map_err(|e| format!("OK line: {e}"))?;
    if !line.starts_with("OK ") {
        return Err(format!("expected OK, got {line:?}"));
    }
    stream.write_all(b"ping").map_err(|e| e.to_string())?;
    let mut reply = [0u8; 9];
    reader
        .read_exact(&mut reply)
        .map_err(|e| format!("reply: {e}"))?;
    Ok(format!(
        "{}|{}",
        line.trim(),
        String::from_utf8_lossy(&reply)
    ))
}

/// Host side of the guest-initiated vsock connection (listener at <socket>_5678).
fn vsock_host_server(listener: UnixListener) -> Result<String, String> {
    listener.set_nonblocking(false).unwrap();
    let (mut stream, _) = listener.accept().map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut buf = [0u8; 16];
    stream.read_exact(&mut buf).map_err(|e| e.to_string())?;
    stream
        .write_all(b"hi-from-host")
        .map_err(|e| e.to_string())?;
    // Wait for the guest's shutdown so the reply is not cut short.
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Captures the guest's frame on the tap and answers it.
fn tap_peer(sock: PacketSocket) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        let Some(frame) = sock.recv() else { continue };
        if frame.len() >= 14 && frame[12..14] == ETHERTYPE {
            let payload = String::from_utf8_lossy(&frame[14..])
                .trim_end_matches('\0')
                .to_string();
            let mut reply = Vec::new();
            reply.extend_from_slice(&GUEST_MAC);
            reply.extend_from_slice(&HOST_MAC);
            reply.extend_from_slice(&ETHERTYPE);
            reply.extend_from_slice(b"podvisor host->guest");
            reply.resize(60, 0);
            sock.send(&reply)?;
            return Ok(payload);
        }
    }
    Err("no frame from the guest".into())
}

#[test]
fn zero_page_and_virtio_devices() {
    if !require_kvm("zero_page_and_virtio_devices") {
        return;
    }
    let dir = scratch("devices");
    let guest = guest_elf();
    let initrd: Vec<u8> = (0..3000u32).map(|i| (i * 7 + 3).to_le_bytes()[0]).collect();
    std::fs::write(dir.join("initrd"), &initrd).unwrap();
    make_disk(&dir.join("disk0"), 64 << 10, 3, b"podvisor-sector-3 hello");
    make_disk(&dir.join("disk1"), 8 << 10, 0, b"read-only disk");
    let vsock = dir.join("vsock.sock");
    let guest_listener = UnixListener::bind(format!("{}_5678", vsock.display())).unwrap();

    // Net needs root for the namespace; everything else runs without it.
    let netns_name = format!("pvvmm{}", std::process::id());
    let net = if require_root("zero_page_and_virtio_devices (net part)") {
        Some(NetNs::with_tap(&netns_name, "tap0").expect("creating the test netns"))
    } else {
        None
    };
    let mut tests = "zeropage,rng,blk,vsock".to_string();
    let mut args = s(&[
        "--kernel",
        guest.to_str().unwrap(),
        "--initrd",
        dir.join("initrd").to_str().unwrap(),
        "--memory",
        "128",
        "--block",
        &format!("path={}", dir.join("disk0").display()),
        "--block",
        &format!("path={},ro", dir.join("disk1").display()),
        "--vsock",
        &format!("cid=3,socket={}", vsock.display()),
        "--rng",
    ]);
    let mut tap_thread = None;
    if let Some(ns) = &net {
        tests.push_str(",net");
        args.extend(s(&["--net", "tap=tap0,mac=02:50:44:56:53:01"]));
        let (tx, rx) = std::sync::mpsc::channel();
        let ns_name = ns.name.clone();
        tap_thread = Some(std::thread::spawn(move || {
            let ns = NetNs { name: ns_name };
            let r = ns
                .enter_current_thread()
                .and_then(|_| PacketSocket::bind("tap0"));
            std::mem::forget(ns); // the test owns the namespace's lifetime
            match r {
                Ok(sock) => {
                    tx.send(()).unwrap();
                    tap_peer(sock)
                }
                Err(e) => {
                    tx.send(()).unwrap();
                    Err(e)
                }
            }
        }));
        rx.recv().unwrap();
    }
    args.extend(s(&[
        "--cmdline",
        &format!("console=ttyS0 tests={tests} blk_sector=3"),
    ]));
    let wrapper: Vec<&str> = match &net {
        Some(ns) => vec!["ip", "netns", "exec", ns.name.as_str()],
        None => vec![],
    };

    let mut vmm = spawn_vmm(&wrapper, &args, &dir);
    let client_path = vsock.clone();
    let client = std::thread::spawn(move || vsock_host_client(&client_path));
    let server = std::thread::spawn(move || vsock_host_server(guest_listener));

    let status = vmm.wait(Duration::from_secs(120));
    let console = vmm.console_text();
    assert!(status.is_some(), "VMM timed out\n{}", vmm.describe());
    assert_eq!(status.unwrap().code(), Some(0), "{}", vmm.describe());

    // Zero page as the 64-bit boot protocol defines it.
    assert!(
        console.contains("ZP loader=0xff boot_flag=0xaa55 header=0x53726448"),
        "{console}"
    );
    assert!(console.contains("ZP e820 n=2\n"), "{console}");
    assert!(console.contains("ZP e820 0x0 0x9fc00 1\n"), "{console}");
    assert!(
        console.contains("ZP e820 0x100000 0x7f00000 1\n"),
        "{console}"
    );
    let fnv = format!("size=3000 fnv={:#x}", fnv1a(&initrd));
    assert!(
        console.contains(&fnv),
        "initrd mismatch, want {fnv}\n{console}"
    );
    assert!(
        console.contains("ZP cmdline=console=ttyS0 tests="),
        "{console}"
    );
    assert!(
        console.contains("virtio_mmio.device=4K@0xd0000000:5"),
        "devices announced on the cmdline\n{console}"
    );
    assert!(console.contains("PASS zeropage"), "{console}");

    assert!(console.contains("PASS rng"), "{console}");
    assert!(
        console.contains("BLK capacity=128 ro=0 read_status=0 data=podvisor-sector-3 hello"),
        "{console}"
    );
    assert!(console.contains("PASS blk\n"), "{console}");
    assert!(
        console.contains("BLKRO ro=1 read_status=0 write_status=1"),
        "{console}"
    );
    assert!(console.contains("PASS blk-ro"), "{console}");
    let disk0 = std::fs::read(dir.join("disk0")).unwrap();
    assert_eq!(&disk0[4 * 512..4 * 512 + 26], b"abcdefghijklmnopqrstuvwxyz");

    let host = client.join().unwrap().expect("host-initiated vsock");
    assert!(host.starts_with("OK 1073741824|pong:ping"), "{host}");
    assert!(console.contains("VSOCK host says: ping"), "{console}");
    assert!(console.contains("PASS vsock-host"), "{console}");
    let from_guest = server.join().unwrap().expect("guest-initiated vsock");
    assert_eq!(from_guest, "hello-from-guest");
    assert!(
        console.contains("VSOCK host replied: hi-from-host"),
        "{console}"
    );
    assert!(console.contains("PASS vsock-guest"), "{console}");

    if let Some(t) = tap_thread {
        let payload = t.join().unwrap().expect("frame from the guest on the tap");
        assert!(payload.starts_with("podvisor guest->host"), "{payload:?}");
        assert!(console.contains("NET mac=025044565301"), "{console}");
        assert!(
            console.contains("NET received: podvisor host->guest"),
            "{console}"
        );
        assert!(console.contains("PASS net"), "{console}");
    }
    assert!(console.contains("DONE failures=0"), "{console}");
    drop(net);
}
