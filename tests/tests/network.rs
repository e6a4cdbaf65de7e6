//! ENI-style pod networking end to end: the NetworkManager's taps, routes
//! and nftables rules carry real guest traffic (two pod VMs on the qemu
//! backend), the metadata address stays out of reach, and detach leaves
//! nothing. Everything runs inside a network namespace of the test's own
//! thread: taps, qemu (forked from that thread), routes, rules and traffic
//! live and die with it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use podvisor::hypervisor::GuestImage;
use podvisor::network::{NetworkConfig, NetworkManager, PodNetwork};
use podvisor_proto::{
    CreateContainerRequest, Rootfs, SetupSandboxRequest, SharedMount, StartContainerRequest,
};
use podvisor_tests::vm::{boot_qemu, qemu_ready, BootOptions, TestVm, GUEST_SHARE, SHARE_TAG};
use serde_json::json;

/// Where the host side answers HTTP: on every address of the namespace,
/// the metadata address included.
const HOST_PORT: u16 = 8081;
const POD_PORT: u16 = 8080;
const METADATA: &str = "169.254.169.254";

fn nft_ready(test: &str) -> bool {
    podvisor_tests::running_as_root(test)
        && podvisor_tests::prerequisite(
            test,
            "nft",
            ["/usr/sbin/nft", "/sbin/nft"]
                .iter()
                .any(|p| Path::new(p).exists()),
            "apt-get install nftables (scripts/install-deps.sh does)",
        )
}

/// Runs `f` on a thread in a network namespace of its own, with a
/// current-thread tokio runtime: every socket, child process and netlink
/// call made from it stays in that namespace, which ends with the thread
/// and the processes it started.
fn in_fresh_netns<F, Fut>(f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("unshare the network namespace");
        run("ip", &["link", "set", "lo", "up"]);
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f());
    })
    .join()
    .expect("the test thread");
}

/// Runs a command in the calling thread's namespace; returns its stdout.
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What the host namespace shows of networking, for leak checks.
fn host_state() -> String {
    format!(
        "{}\n{}\n{}",
        run("ip", &["-o", "link", "show"]),
        run("ip", &["-o", "-4", "route", "show", "table", "all"]),
        run("nft", &["list", "ruleset"])
    )
}

fn assert_nothing_of(pods: &[&PodNetwork], context: &str) {
    let state = host_state();
    for pod in pods {
        // The tap name covers the link, its local route and its pod chain.
        assert!(
            !state.contains(&pod.tap),
            "{context}: {} left:\n{state}",
            pod.tap
        );
        assert!(
            !state.contains(&format!("{} ", pod.ip)),
            "{context}: route to {} left:\n{state}",
            pod.ip
        );
    }
}

fn config(primary: &str) -> NetworkConfig {
    NetworkConfig {
        primary_cidr: Some(primary.parse().unwrap()),
        // Jumbo frames like an AWS ENI: proves the MTU reaches tap and guest.
        mtu: 9001,
        ..Default::default()
    }
}

#[test]
fn attach_detach_rollback_and_orphan_cleanup_leave_nothing() {
    let test = "attach_detach_rollback_and_orphan_cleanup_leave_nothing";
    if !nft_ready(test) {
        return;
    }
    in_fresh_netns(|| async {
        let state = tempfile::tempdir().unwrap();
        let manager = NetworkManager::new(config("10.201.0.0/29"), state.path()).unwrap();
        manager.ready().expect("network ready");
        let a = manager.attach("sandbox-a").await.expect("attach a");
        let b = manager.attach("sandbox-b").await.expect("attach b");
        assert_eq!(manager.attach("sandbox-a").await.unwrap(), a, "idempotent");
        assert_eq!(
            (a.ip.to_string(), b.ip.to_string()),
            ("10.201.0.2".into(), "10.201.0.3".into())
        );

        let link = run("ip", &["-o", "link", "show", &a.tap]);
        assert!(link.contains("mtu 9001") && link.contains(",UP"), "{link}");
        let addr = run("ip", &["-o", "addr", "show", "dev", &a.tap]);
        assert!(
            addr.contains("inet 10.201.0.1/32"),
            "the gateway on the tap: {addr}"
        );
        // Both VMMs can attach: podvisor-vmm asks for a vnet header (qemu
        // with vhost=off may too), which a persistent tap takes per attach.
        attach_like_a_vmm(&a.tap).expect("TUNSETIFF with IFF_VNET_HDR on the pod tap");
        assert!(
            run("ip", &["-o", "link", "show", &a.tap]).contains("mtu 9001"),
            "still there"
        );
        let routes = run("ip", &["-4", "route"]);
        assert!(
            routes.contains(&format!("10.201.0.2 dev {} ", a.tap)),
            "{routes}"
        );
        assert!(
            routes.contains(&format!("10.201.0.3 dev {} ", b.tap)),
            "{routes}"
        );
        assert_eq!(
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
                .unwrap()
                .trim(),
            "1"
        );
        let rules = run("nft", &["list", "ruleset"]);
        assert!(rules.contains(&format!("chain pod_{}", a.tap)), "{rules}");
        assert!(rules.contains("ip daddr 169.254.169.254 drop"), "{rules}");
        assert!(rules.contains("ip saddr != 10.201.0.2 drop"), "{rules}");

        manager.detach("sandbox-a").await.expect("detach a");
        manager
            .detach("sandbox-a")
            .await
            .expect("detach is idempotent");
        assert_nothing_of(&[&a], "after detach");
        assert_eq!(manager.lease("sandbox-a"), None);

        // Leftovers of a crash: a lease, a tap and a chain of sandboxes the
        // runtime no longer knows; cleanup removes them and keeps b.
        let stray = manager.attach("sandbox-gone").await.unwrap();
        run(
            "ip",
            &["tuntap", "add", "dev", "pvtap0000000000", "mode", "tap"],
        );
        run("nft", &["add chain inet podvisor pod_pvtap1111111111"]);
        run(
            "nft",
            &["add element inet podvisor pods { \"pvtap1111111111\" : jump pod_pvtap1111111111 }"],
        );
        let orphans = manager
            .cleanup_orphans(&["sandbox-b".to_string()])
            .await
            .unwrap();
        assert_eq!(orphans.leases, ["sandbox-gone"]);
        assert_eq!(orphans.taps, ["pvtap0000000000"]);
        assert_eq!(orphans.chains, ["pvtap1111111111"]);
        assert!(!host_state().contains("pvtap1111111111"));
        assert_nothing_of(&[&stray], "after cleanup");
        assert!(
            host_state().contains(&b.tap),
            "b's tap survived the cleanup"
        );
        assert_eq!(manager.lease("sandbox-b"), Some(b.clone()));

        // A failure half-way (nft refuses our map) undoes the tap, route and
        // address lease it had already made.
        run("nft", &["delete", "table", "inet", "podvisor"]);
        run(
            "nft",
            &["add table inet podvisor { map pods { type ipv4_addr : verdict; }; }"],
        );
        let err = manager.attach("sandbox-c").await.unwrap_err();
        assert!(err.to_string().contains("nft failed"), "{err}");
        let c_tap = podvisor::network::tap::tap_name("pvtap", "sandbox-c");
        assert!(!host_state().contains(&c_tap), "rolled back");
        assert_eq!(manager.lease("sandbox-c"), None);
        run("nft", &["delete", "table", "inet", "podvisor"]);

        manager.detach("sandbox-b").await.unwrap();
        assert_nothing_of(&[&b], "after the last detach");
        let rules = run("nft", &["list", "ruleset"]);
        assert!(
            !rules.contains("pod_") && !rules.contains("elements"),
            "{rules}"
        );
    });
}

#[test]
fn host_port_chains_load_and_leave_with_their_pod() {
    let test = "host_port_chains_load_and_leave_with_their_pod";
    if !nft_ready(test) {
        return;
    }
    in_fresh_netns(|| async {
        use podvisor::network::hostport::{HostPort, Protocol};
        let state = tempfile::tempdir().unwrap();
        let manager = NetworkManager::new(config("10.202.0.0/29"), state.path()).unwrap();
        let ports = [
            HostPort::new(0, Protocol::Tcp, "", 12000, 80).unwrap(),
            HostPort::new(1, Protocol::Udp, "127.0.0.1", 12001, 53).unwrap(),
            HostPort::new(2, Protocol::Sctp, "", 12002, 9000).unwrap(),
        ];
        let a = manager
            .attach_with_host_ports("sandbox-a", &ports)
            .await
            .expect("attach with host ports");
        let plain = manager.attach("sandbox-b").await.unwrap();
        let localnet = |tap: &str| {
            std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{tap}/route_localnet"))
                .unwrap()
                .trim()
                .to_string()
        };
        assert_eq!(localnet(&a.tap), "1", "loopback DNAT needs route_localnet");
        assert_eq!(localnet(&plain.tap), "0", "only where host ports need it");
        let rules = run("nft", &["list", "ruleset"]);
        for want in [
            format!("chain hp_prerouting_{}", a.tap),
            format!("chain hp_output_{}", a.tap),
            format!("chain hp_postrouting_{}", a.tap),
            "fib daddr type local tcp dport 12000 dnat ip to 10.202.0.2:80".into(),
            "ip daddr 127.0.0.1 udp dport 12001 dnat ip to 10.202.0.2:53".into(),
            "sctp dport 12002 dnat ip to 10.202.0.2:9000".into(),
            "snat ip to 10.202.0.1".into(),
            "ip daddr 127.0.0.0/8 drop".into(),
        ] {
            assert!(rules.contains(&want), "{want} missing:\n{rules}");
        }
        assert!(
            !rules.contains(&format!("hp_prerouting_{}", plain.tap)),
            "{rules}"
        );

        manager.detach("sandbox-a").await.expect("detach a");
        assert_nothing_of(&[&a], "after detach");
        assert!(!run("nft", &["list", "ruleset"]).contains("dnat"));

        // A crash between attach and the record: orphan cleanup removes
        // the host-port chains with the rest.
        let stray = manager
            .attach_with_host_ports("sandbox-gone", &ports[..1])
            .await
            .unwrap();
        let orphans = manager
            .cleanup_orphans(&["sandbox-b".to_string()])
            .await
            .unwrap();
        assert_eq!(orphans.leases, ["sandbox-gone"]);
        assert_nothing_of(&[&stray], "after cleanup");
        assert!(!run("nft", &["list", "ruleset"]).contains("dnat"));
        manager.detach("sandbox-b").await.unwrap();
        assert_nothing_of(&[&plain], "after the last detach");
    });
}

#[test]
fn pods_route_to_each_other_and_the_host_but_not_to_metadata() {
    let test = "pods_route_to_each_other_and_the_host_but_not_to_metadata";
    if !qemu_ready(test) || !nft_ready(test) {
        return;
    }
    in_fresh_netns(|| async {
        let started = Instant::now();
        // The host side: an HTTP answer on every address, the metadata
        // address among them (as an IMDS proxy on the host would be).
        run(
            "ip",
            &["addr", "add", &format!("{METADATA}/32"), "dev", "lo"],
        );
        serve_http(
            TcpListener::bind(("0.0.0.0", HOST_PORT)).unwrap(),
            "host-ok",
        );

        let dir = tempfile::tempdir().unwrap();
        let manager =
            NetworkManager::new(config("10.200.0.0/24"), &dir.path().join("state")).unwrap();
        let a = manager.attach("net-pod-a").await.expect("attach a");
        let b = manager.attach("net-pod-b").await.expect("attach b");

        let (dir_a, dir_b) = (dir.path().join("a"), dir.path().join("b"));
        let (mut vm_a, mut vm_b) = tokio::join!(boot(&a, &dir_a), boot(&b, &dir_b));
        eprintln!("two pod VMs up after {:?}", started.elapsed());
        setup(&mut vm_a, &a).await;
        setup(&mut vm_b, &b).await;

        // Pod a serves HTTP; the host reaches it, and pings both pods.
        start_background(
            &mut vm_a,
            "web",
            &format!("mkdir -p /tmp/www && echo pod-a-ok > /tmp/www/index.html && exec httpd -f -p {POD_PORT} -h /tmp/www"),
        )
        .await;
        let body = http_get_with_retry(&format!("{}:{POD_PORT}", a.ip), Duration::from_secs(30));
        assert!(body.contains("pod-a-ok"), "host -> pod a over TCP: {body}");
        for pod in [&a, &b] {
            let out = run(
                "busybox",
                &["ping", "-c", "2", "-W", "5", &pod.ip.to_string()],
            );
            assert!(
                out.contains("2 packets received"),
                "host -> {}: {out}",
                pod.ip
            );
        }

        // Pod b: its interface as configured, then pod -> pod, pod -> host,
        // and the metadata address (which must fail). busybox nc, not wget:
        // static busybox's wget looks up the "http" service through NSS,
        // which crashes in a rootfs without NSS modules.
        let get = "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | timeout 15 nc -w 5";
        let script = format!(
            "cat /sys/class/net/eth0/mtu; ip -4 -o addr show dev eth0; ip route; \
             ping -c 2 -W 5 {a} >/dev/null && echo PING_POD_OK; \
             ping -c 1 -W 5 {gw} >/dev/null && echo PING_GATEWAY_OK; \
             echo '== pod'; {get} {a} {POD_PORT}; echo \"== pod exit $?\"; \
             echo '== host'; {get} {gw} {HOST_PORT}; echo \"== host exit $?\"; \
             echo '== metadata'; {get} {METADATA} {HOST_PORT}; echo \"== metadata exit $?\"",
            a = a.ip,
            gw = b.gateway,
        );
        let (out, exit) = vm_b.run_container("client", shell_spec(&script)).await;
        eprintln!("pod b:\n{out}");
        assert_eq!(exit.exit_code, 0, "{out}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.first(), Some(&"9001"), "guest MTU: {out}");
        assert!(out.contains(&format!("inet {}/32", b.ip)), "{out}");
        assert!(
            out.contains(&format!("default via {} dev eth0", b.gateway)),
            "{out}"
        );
        assert!(out.contains("PING_POD_OK"), "pod b -> pod a ping: {out}");
        assert!(
            out.contains("PING_GATEWAY_OK"),
            "pod b -> gateway ping: {out}"
        );
        let pod = section(&out, "pod");
        assert!(
            pod.contains("pod-a-ok") && pod.contains("== pod exit 0"),
            "pod b -> pod a over TCP: {out}"
        );
        let host = section(&out, "host");
        assert!(
            host.contains("host-ok") && host.contains("== host exit 0"),
            "pod b -> host over TCP: {out}"
        );
        let metadata = section(&out, "metadata");
        assert!(
            !metadata.contains("host-ok"),
            "the metadata address answered: {out}"
        );
        // nc's own failure (1: timed out connecting), not a crash.
        assert!(metadata.contains("== metadata exit 1"), "{out}");
        // The host itself still reaches its metadata listener: the block is
        // the pod's alone.
        assert!(
            http_get_with_retry(&format!("{METADATA}:{HOST_PORT}"), Duration::from_secs(5))
                .contains("host-ok")
        );

        let exits = tokio::join!(vm_a.shutdown(), vm_b.shutdown());
        assert_eq!((exits.0.code, exits.1.code), (Some(0), Some(0)));
        manager.detach("net-pod-a").await.expect("detach a");
        manager.detach("net-pod-b").await.expect("detach b");
        assert_nothing_of(&[&a, &b], "after detach");
        eprintln!("network test done after {:?}", started.elapsed());
    });
}

/// The installed guest image, or the one in `PODVISOR_GUEST_DIR` (a guest
/// image built elsewhere, e.g. with an agent under development).
fn guest_image() -> GuestImage {
    match std::env::var_os("PODVISOR_GUEST_DIR") {
        Some(dir) => GuestImage {
            kernel: Path::new(&dir).join("vmlinux"),
            initramfs: Path::new(&dir).join("initramfs.img"),
        },
        None => GuestImage::default(),
    }
}

async fn boot(pod: &PodNetwork, dir: &Path) -> TestVm {
    let share = dir.join("share");
    podvisor_tests::rootfs::busybox_rootfs(&share.join("rootfs"));
    boot_qemu(
        &pod.sandbox_id,
        dir,
        BootOptions {
            image: guest_image(),
            share: Some(share),
            tap: Some(pod.tap_device()),
            vcpus: 1,
            ..Default::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("boot {}: {e}", pod.sandbox_id))
}

/// SetupSandbox as the sandbox lifecycle sends it: the pod's interface and
/// routes, plus the test's share.
async fn setup(vm: &mut TestVm, pod: &PodNetwork) {
    let (interfaces, routes) = pod.agent_setup();
    let request = SetupSandboxRequest {
        hostname: pod.sandbox_id.clone(),
        interfaces,
        routes,
        mounts: vec![SharedMount {
            fstype: "virtiofs".into(),
            source: SHARE_TAG.into(),
            target: GUEST_SHARE.into(),
            options: vec![],
            readonly: true,
        }],
        ..Default::default()
    };
    if let Err(e) = vm.agent.setup_sandbox(request).await {
        panic!(
            "SetupSandbox for {}: {e}\nconsole:\n{}",
            pod.sandbox_id,
            vm.vm.console_tail(4000)
        );
    }
}

fn shell_spec(script: &str) -> serde_json::Value {
    let caps = ["CAP_NET_RAW", "CAP_NET_BIND_SERVICE"];
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "args": ["sh", "-c", script],
            "cwd": "/",
            "env": ["PATH=/bin:/sbin"],
            "user": {"uid": 0, "gid": 0},
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps}
        }
    })
}

/// Starts a container that keeps running (a server); it ends with the VM.
async fn start_background(vm: &mut TestVm, id: &str, script: &str) {
    let create = CreateContainerRequest {
        container_id: id.into(),
        oci_spec_json: serde_json::to_vec(&shell_spec(script)).unwrap(),
        rootfs: Some(Rootfs {
            lower_dirs: vec![format!("{GUEST_SHARE}/rootfs")],
            writable_in_place: false,
        }),
        stdin: false,
        tty: false,
        ..Default::default()
    };
    vm.agent
        .create_container(create)
        .await
        .expect("create server");
    vm.agent
        .start_container(StartContainerRequest {
            container_id: id.into(),
        })
        .await
        .expect("start server");
}

/// Opens the tap as podvisor-vmm does (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
/// and closes it again.
fn attach_like_a_vmm(tap: &str) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    const FLAGS: libc::c_short = 0x0002 | 0x1000 | 0x4000;
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let mut request = [0u8; 40];
    request[..tap.len()].copy_from_slice(tap.as_bytes());
    request[16..18].copy_from_slice(&FLAGS.to_ne_bytes());
    // SAFETY: TUNSETIFF on a 40-byte struct ifreq.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, request.as_mut_ptr()) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The output of `out` from the `== name` marker to the next marker
/// after it (the exit line included).
fn section<'a>(out: &'a str, name: &str) -> &'a str {
    let start = out.find(&format!("== {name}\n")).unwrap_or(out.len());
    let rest = &out[start..];
    let exit = format!("== {name} exit");
    match rest.find(&exit) {
        Some(i) => &rest[..rest[i..].find('\n').map_or(rest.len(), |j| i + j)],
        None => rest,
    }
}

/// Answers every connection with a fixed HTTP response, from a thread.
fn serve_http(listener: TcpListener, body: &'static str) {
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request);
            let _ = write!(
                stream,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}\n",
                body.len() + 1
            );
        }
    });
}

/// The body of `GET /` from `address`, retried until `patience` runs out
/// (a server in a just-started container may not listen yet).
fn http_get_with_retry(address: &str, patience: Duration) -> String {
    let deadline = Instant::now() + patience;
    loop {
        let attempt = (|| -> std::io::Result<String> {
            let addr = address.parse().expect("an address:port");
            let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            stream.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            Ok(response)
        })();
        match attempt {
            Ok(response) if response.contains("200 OK") => return response,
            other if Instant::now() >= deadline => panic!("GET http://{address}/: {other:?}"),
            _ => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}
