//! A user-space NFSv4 server for tests: Debian's nfs-ganesha with its VFS
//! back end, exporting one directory as `/`. Started from the calling
//! thread, so it lives in that thread's network namespace; it listens on
//! every address of it, on TCP port 2049 (NFSv4 needs no portmapper).

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const GANESHA: &str = "/usr/bin/ganesha.nfsd";
const VFS_FSAL: &str = "/usr/lib/x86_64-linux-gnu/ganesha/libfsalvfs.so";

/// Whether ganesha and its VFS back end are installed (see
/// [`crate::prerequisite`] for how a miss is reported).
pub fn ganesha_ready(test: &str) -> bool {
    crate::prerequisite(
        test,
        "nfs-ganesha (ganesha.nfsd with the VFS FSAL)",
        Path::new(GANESHA).is_file() && Path::new(VFS_FSAL).is_file(),
        "apt-get install nfs-ganesha nfs-ganesha-vfs (scripts/install-deps.sh does)",
    )
}

pub struct Ganesha {
    child: Child,
    log: PathBuf,
}

impl Ganesha {
    /// Starts a server exporting `export` (read-write, root not squashed),
    /// with its configuration, pid file, log and recovery state in `dir`;
    /// returns once it accepts connections.
    pub fn start(export: &Path, dir: &Path) -> std::io::Result<Ganesha> {
        let recovery = dir.join("recovery");
        std::fs::create_dir_all(&recovery)?;
        let config = dir.join("ganesha.conf");
        // Graceless: no 90 s grace period, in which new clients could not
        // open files. Short leases: a killed client's state goes quickly.
        std::fs::write(
            &config,
            format!(
                "NFS_CORE_PARAM {{ Protocols = 4; NFS_Port = 2049; Enable_NLM = false; Enable_RQUOTA = false; }}\n\
                 NFSV4 {{ Graceless = true; Lease_Lifetime = 10; RecoveryBackend = fs; RecoveryRoot = \"{recovery}\"; }}\n\
                 NFS_KRB5 {{ Active_krb5 = false; }}\n\
                 EXPORT {{\n  Export_Id = 1; Path = \"{export}\"; Pseudo = /; Protocols = 4;\n  \
                 Access_Type = RW; Squash = No_Root_Squash; SecType = sys;\n  FSAL {{ Name = VFS; }}\n}}\n",
                recovery = recovery.display(),
                export = export.display(),
            ),
        )?;
        let log = dir.join("ganesha.log");
        let child = Command::new(GANESHA)
            .arg("-F")
            .arg("-f")
            .arg(&config)
            .arg("-p")
            .arg(dir.join("ganesha.pid"))
            .arg("-L")
            .arg(&log)
            .arg("-N")
            .arg("NIV_EVENT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut server = Ganesha { child, log };
        let deadline = Instant::now() + Duration::from_secs(15);
        let addr: SocketAddr = ([127, 0, 0, 1], 2049).into();
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(server);
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(std::io::Error::other(format!(
                    "ganesha.nfsd exited with {status}:\n{}",
                    server.log()
                )));
            }
            if Instant::now() > deadline {
                return Err(std::io::Error::other(format!(
                    "ganesha.nfsd did not listen on 2049 within 15 s:\n{}",
                    server.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Ganesha {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
