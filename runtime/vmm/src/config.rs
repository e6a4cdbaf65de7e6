//! VM configuration: a JSON file (`--config`) and/or command-line flags;
//! flags given on the command line override the file.

use std::path::PathBuf;

use serde::Deserialize;

use crate::boot::BootProtocolChoice;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Usage(String),
    #[error("reading config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {msg}")]
    Parse { path: PathBuf, msg: String },
    #[error("invalid value for {flag}: {msg}")]
    Value { flag: String, msg: String },
    #[error("missing required setting: {0}")]
    Missing(&'static str),
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// Name of an existing tap device to attach to.
    #[serde(default)]
    pub tap: Option<String>,
    /// An already opened tap file descriptor inherited from the parent.
    #[serde(default)]
    pub fd: Option<i32>,
    /// Guest MAC address, "aa:bb:cc:dd:ee:ff".
    #[serde(default)]
    pub mac: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BlockConfig {
    pub path: PathBuf,
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    pub cid: u64,
    /// Host-side unix socket (Firecracker's hybrid vsock).
    pub socket: PathBuf,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    pub tag: String,
    /// virtiofsd's vhost-user socket.
    pub socket: PathBuf,
    #[serde(default = "default_fs_queue_size")]
    pub queue_size: u16,
}

fn default_fs_queue_size() -> u16 {
    256
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SeccompMode {
    /// Kill the process on a syscall outside the thread's allow list.
    #[default]
    On,
    /// Log such syscalls (to the kernel audit log) and allow them.
    Log,
    Off,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    pub kernel: PathBuf,
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    #[serde(default)]
    pub cmdline: String,
    #[serde(default, with = "protocol_serde")]
    pub boot_protocol: BootProtocolChoice,
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u64,
    /// Console log file; "-" for standard output; unset: discarded.
    #[serde(default)]
    pub console: Option<PathBuf>,
    #[serde(default)]
    pub net: Vec<NetConfig>,
    #[serde(default)]
    pub block: Vec<BlockConfig>,
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    #[serde(default)]
    pub rng: bool,
    #[serde(default)]
    pub fs: Vec<FsConfig>,
    #[serde(default)]
    pub api_socket: Option<PathBuf>,
    #[serde(default)]
    pub uid: Option<u32>,
    #[serde(default)]
    pub gid: Option<u32>,
    #[serde(default)]
    pub seccomp: SeccompMode,
}

fn default_vcpus() -> u8 {
    1
}

fn default_memory_mib() -> u64 {
    128
}

mod protocol_serde {
    use super::BootProtocolChoice;
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BootProtocolChoice, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

pub const USAGE: &str = "\
usage: podvisor-vmm [--config FILE] --kernel PATH [options]

  --config FILE           JSON file with the settings below (flags override it)
  --kernel PATH           ELF vmlinux or bzImage
  --initrd PATH           initramfs
  --cmdline STRING        kernel command line (virtio_mmio.device= entries are appended)
  --boot-protocol P       auto (PVH if the kernel has the note) | pvh | linux64
  --vcpus N               number of vCPUs (default 1)
  --memory MIB            guest RAM in MiB (default 128)
  --console PATH          serial console log file, '-' for stdout
  --net tap=NAME|fd=N[,mac=MAC]      virtio-net on a tap (repeatable)
  --block path=PATH[,ro]             virtio-blk on a raw file (repeatable)
  --vsock cid=N,socket=PATH          virtio-vsock, host side on a unix socket
  --rng                              virtio-rng
  --fs tag=TAG,socket=PATH           virtio-fs through a vhost-user backend (repeatable)
  --api-socket PATH       control API unix socket
  --uid N --gid N         drop to this user and group after setup
  --seccomp on|log|off    per-thread syscall filters (default on)
  --version               print the version
";

fn key_values(flag: &str, spec: &str) -> Result<Vec<(String, Option<String>)>, ConfigError> {
    if spec.is_empty() {
        return Err(ConfigError::Value {
            flag: flag.into(),
            msg: "empty value".into(),
        });
    }
    Ok(spec
        .split(',')
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (kv.to_string(), None),
        })
        .collect())
}

fn value_err(flag: &str, msg: impl Into<String>) -> ConfigError {
    ConfigError::Value {
        flag: flag.into(),
        msg: msg.into(),
    }
}

fn parse_num<T: std::str::FromStr>(flag: &str, s: &str) -> Result<T, ConfigError> {
    s.parse()
        .map_err(|_| value_err(flag, format!("{s:?} is not a valid number")))
}

fn need(flag: &str, key: &str, v: Option<String>) -> Result<String, ConfigError> {
    v.ok_or_else(|| value_err(flag, format!("{key} needs a value")))
}

fn parse_net(spec: &str) -> Result<NetConfig, ConfigError> {
    let mut net = NetConfig::default();
    for (k, v) in key_values("--net", spec)? {
        match k.as_str() {
            "tap" => net.tap = Some(need("--net", &k, v)?),
            "fd" => net.fd = Some(parse_num("--net", &need("--net", &k, v)?)?),
            "mac" => net.mac = Some(need("--net", &k, v)?),
            other => return Err(value_err("--net", format!("unknown key {other:?}"))),
        }
    }
    Ok(net)
}

fn parse_block(spec: &str) -> Result<BlockConfig, ConfigError> {
    let mut path = None;
    let mut read_only = false;
    for (k, v) in key_values("--block", spec)? {
        match k.as_str() {
            "path" => path = Some(PathBuf::from(need("--block", &k, v)?)),
            "ro" | "read_only" => read_only = true,
            other => return Err(value_err("--block", format!("unknown key {other:?}"))),
        }
    }
    Ok(BlockConfig {
        path: path.ok_or_else(|| value_err("--block", "path= is required"))?,
        read_only,
    })
}

fn parse_vsock(spec: &str) -> Result<VsockConfig, ConfigError> {
    let (mut cid, mut socket) = (None, None);
    for (k, v) in key_values("--vsock", spec)? {
        match k.as_str() {
            "cid" => cid = Some(parse_num("--vsock", &need("--vsock", &k, v)?)?),
            "socket" => socket = Some(PathBuf::from(need("--vsock", &k, v)?)),
            other => return Err(value_err("--vsock", format!("unknown key {other:?}"))),
        }
    }
    Ok(VsockConfig {
        cid: cid.ok_or_else(|| value_err("--vsock", "cid= is required"))?,
        socket: socket.ok_or_else(|| value_err("--vsock", "socket= is required"))?,
    })
}

fn parse_fs(spec: &str) -> Result<FsConfig, ConfigError> {
    let (mut tag, mut socket, mut queue_size) = (None, None, default_fs_queue_size());
    for (k, v) in key_values("--fs", spec)? {
        match k.as_str() {
            "tag" => tag = Some(need("--fs", &k, v)?),
            "socket" => socket = Some(PathBuf::from(need("--fs", &k, v)?)),
            "queue_size" => queue_size = parse_num("--fs", &need("--fs", &k, v)?)?,
            other => return Err(value_err("--fs", format!("unknown key {other:?}"))),
        }
    }
    Ok(FsConfig {
        tag: tag.ok_or_else(|| value_err("--fs", "tag= is required"))?,
        socket: socket.ok_or_else(|| value_err("--fs", "socket= is required"))?,
        queue_size,
    })
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    Run(Box<VmConfig>),
    Help,
    Version,
}

impl VmConfig {
    /// A config with defaults and the given kernel.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        VmConfig {
            kernel: kernel.into(),
            initrd: None,
            cmdline: String::new(),
            boot_protocol: BootProtocolChoice::Auto,
            vcpus: default_vcpus(),
            memory_mib: default_memory_mib(),
            console: None,
            net: Vec::new(),
            block: Vec::new(),
            vsock: None,
            rng: false,
            fs: Vec::new(),
            api_socket: None,
            uid: None,
            gid: None,
            seccomp: SeccompMode::On,
        }
    }

    pub fn from_json(path: &std::path::Path, text: &str) -> Result<Self, ConfigError> {
        serde_json::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })
    }

    /// Parses the process arguments (without argv[0]).
    pub fn from_args<I: IntoIterator<Item = String>>(args: I) -> Result<Command, ConfigError> {
        let args: Vec<String> = args.into_iter().collect();
        // The config file is the base; find it first.
        let mut cfg: Option<VmConfig> = None;
        if let Some(i) = args.iter().position(|a| a == "--config") {
            let path = PathBuf::from(
                args.get(i + 1)
                    .ok_or_else(|| value_err("--config", "needs a file"))?,
            );
            let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::ReadFile {
                path: path.clone(),
                source,
            })?;
            cfg = Some(Self::from_json(&path, &text)?);
        }
        let mut cfg = cfg.unwrap_or_else(|| VmConfig::new(""));
        let mut it = args.into_iter();
        while let Some(flag) = it.next() {
            let mut value = |name: &str| it.next().ok_or_else(|| value_err(name, "missing value"));
            match flag.as_str() {
                "-h" | "--help" => return Ok(Command::Help),
                "-V" | "--version" => return Ok(Command::Version),
                "--config" => {
                    value("--config")?;
                }
                "--kernel" => cfg.kernel = value("--kernel")?.into(),
                "--initrd" => cfg.initrd = Some(value("--initrd")?.into()),
                "--cmdline" => cfg.cmdline = value("--cmdline")?,
                "--boot-protocol" => {
                    cfg.boot_protocol = value("--boot-protocol")?
                        .parse()
                        .map_err(|m: String| value_err("--boot-protocol", m))?
                }
                "--vcpus" => cfg.vcpus = parse_num("--vcpus", &value("--vcpus")?)?,
                "--memory" => cfg.memory_mib = parse_num("--memory", &value("--memory")?)?,
                "--console" => cfg.console = Some(value("--console")?.into()),
                "--net" => cfg.net.push(parse_net(&value("--net")?)?),
                "--block" => cfg.block.push(parse_block(&value("--block")?)?),
                "--vsock" => cfg.vsock = Some(parse_vsock(&value("--vsock")?)?),
                "--rng" => cfg.rng = true,
                "--fs" => cfg.fs.push(parse_fs(&value("--fs")?)?),
                "--api-socket" => cfg.api_socket = Some(value("--api-socket")?.into()),
                "--uid" => cfg.uid = Some(parse_num("--uid", &value("--uid")?)?),
                "--gid" => cfg.gid = Some(parse_num("--gid", &value("--gid")?)?),
                "--seccomp" => {
                    cfg.seccomp = match value("--seccomp")?.as_str() {
                        "on" => SeccompMode::On,
                        "log" => SeccompMode::Log,
                        "off" => SeccompMode::Off,
                        other => {
                            return Err(value_err(
                                "--seccomp",
                                format!("{other:?} (expected on, log or off)"),
                            ))
                        }
                    }
                }
                other => {
                    return Err(ConfigError::Usage(format!(
                        "unknown argument {other:?}\n\n{USAGE}"
                    )))
                }
            }
        }
        cfg.validate()?;
        Ok(Command::Run(Box::new(cfg)))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.kernel.as_os_str().is_empty() {
            return Err(ConfigError::Missing("--kernel"));
        }
        if self.vcpus == 0 {
            return Err(value_err("--vcpus", "must be at least 1"));
        }
        for net in &self.net {
            if net.tap.is_some() == net.fd.is_some() {
                return Err(value_err("--net", "give exactly one of tap= or fd="));
            }
            if let Some(mac) = &net.mac {
                parse_mac(mac).map_err(|m| value_err("--net", m))?;
            }
        }
        if let Some(v) = &self.vsock {
            if v.cid < 3 || v.cid > u64::from(u32::MAX) {
                return Err(value_err("--vsock", "cid must be between 3 and 2^32-1"));
            }
        }
        if self.uid.is_some() != self.gid.is_some() {
            return Err(value_err("--uid/--gid", "give both or neither"));
        }
        Ok(())
    }

    pub fn mem_size(&self) -> u64 {
        self.memory_mib.saturating_mul(1 << 20)
    }
}

/// Parses "aa:bb:cc:dd:ee:ff".
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(format!("MAC {s:?} must have six bytes"));
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(parts) {
        *b = u8::from_str_radix(p, 16).map_err(|_| format!("MAC {s:?}: bad byte {p:?}"))?;
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn parses_flags() {
        let Command::Run(cfg) = VmConfig::from_args(args(&[
            "--kernel",
            "/k",
            "--vcpus",
            "2",
            "--net",
            "tap=tap0,mac=02:00:00:00:00:01",
            "--block",
            "path=/d,ro",
            "--vsock",
            "cid=3,socket=/tmp/v",
            "--rng",
            "--boot-protocol",
            "linux64",
        ]))
        .unwrap() else {
            panic!("expected run")
        };
        assert_eq!(cfg.vcpus, 2);
        assert_eq!(cfg.net[0].tap.as_deref(), Some("tap0"));
        assert!(cfg.block[0].read_only);
        assert_eq!(cfg.vsock.as_ref().unwrap().cid, 3);
        assert!(cfg.rng);
        assert_eq!(cfg.boot_protocol, BootProtocolChoice::Linux64);
    }

    #[test]
    fn rejects_bad_input() {
        let refused = |a: &[&str]| match VmConfig::from_args(args(a)) {
            Ok(c) => panic!("{a:?} was accepted: {c:?}"),
            Err(e) => e,
        };
        let bad_value = |a: &[&str], flag: &str, why: &str| {
            let err = refused(a);
            assert!(
                matches!(&err, ConfigError::Value { flag: f, msg } if f == flag && msg.contains(why)),
                "{a:?}: {err:?}"
            );
        };
        let err = refused(&["--vcpus", "1"]);
        assert!(matches!(err, ConfigError::Missing("--kernel")), "{err:?}");
        bad_value(
            &["--kernel", "/k", "--vcpus", "x"],
            "--vcpus",
            "\"x\" is not a valid number",
        );
        let err = refused(&["--kernel", "/k", "--bogus"]);
        assert!(
            matches!(&err, ConfigError::Usage(m) if m.starts_with("unknown argument \"--bogus\"")),
            "{err:?}"
        );
        bad_value(
            &["--kernel", "/k", "--net", "mac=1:2"],
            "--net",
            "exactly one of tap= or fd=",
        );
        bad_value(
            &["--kernel", "/k", "--net", "tap=t0,mac=1:2"],
            "--net",
            "MAC \"1:2\" must have six bytes",
        );
        bad_value(
            &["--kernel", "/k", "--vsock", "cid=2,socket=/s"],
            "--vsock",
            "cid must be between 3",
        );
    }

    #[test]
    fn json_config() {
        let cfg = VmConfig::from_json(
            std::path::Path::new("x.json"),
            r#"{"kernel":"/k","memory_mib":256,"block":[{"path":"/d"}],"boot_protocol":"pvh"}"#,
        )
        .unwrap();
        assert_eq!(cfg.memory_mib, 256);
        assert_eq!(cfg.boot_protocol, BootProtocolChoice::Pvh);
        let err = VmConfig::from_json(std::path::Path::new("x"), r#"{"kernel":"/k","nope":1}"#)
            .unwrap_err();
        assert!(
            matches!(&err, ConfigError::Parse { msg, .. } if msg.contains("unknown field `nope`")),
            "{err:?}"
        );
    }

    #[test]
    fn mac() {
        assert_eq!(
            parse_mac("02:00:00:00:00:ff").unwrap(),
            [2, 0, 0, 0, 0, 0xff]
        );
        assert_eq!(
            parse_mac("02:00"),
            Err("MAC \"02:00\" must have six bytes".to_string())
        );
        assert_eq!(
            parse_mac("02:00:00:00:00:zz"),
            Err("MAC \"02:00:00:00:00:zz\": bad byte \"zz\"".to_string())
        );
    }
}
