//! A throwaway nginx for tests: Debian's `nginx` on an ephemeral loopback port, with a generated
//! `nginx.conf` in a temporary folder, in its own process group; stopped when dropped.
//! Standard library, `tempfile` and `libc` only, so the server's tests can include this file too
//! (`#[path]`).

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running nginx.
pub struct Nginx {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

#[allow(dead_code)] // each test binary that includes this file uses one of the two
impl Nginx {
    /// Starts nginx with `http` as the inside of its `http { … }` block, after the temporary
    /// paths. `{listen}` in it is replaced by the loopback address and port nginx listens on;
    /// `{dir}` by its temporary folder.
    pub fn start(http: &str) -> Nginx {
        // A free port: the kernel picks it; nginx takes it over a moment later.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Nginx::start_on(port, http)
    }

    /// Like [`Nginx::start`], on a loopback port chosen before (when others must know it first).
    pub fn start_on(port: u16, http: &str) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let http = http
            .replace("{listen}", &format!("127.0.0.1:{port}"))
            .replace("{dir}", &d);
        let conf = format!(
            "daemon off;\nuser root;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\nevents {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n\
             proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n\
             uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n{http}\n}}\n"
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let child = Command::new("nginx")
            // A process group of its own, so nothing of it outlives the test.
            .process_group(0)
            .arg("-c")
            .arg(&path)
            .arg("-p")
            .arg(dir.path())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("nginx runs (apt-get install nginx-light)");
        let mut nginx = Nginx { child, port, dir };
        // Ready when it accepts connections.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                panic!(
                    "nginx exited ({status}): {}",
                    std::fs::read_to_string(nginx.dir.path().join("error.log")).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "nginx did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Nginx {
    /// SIGTERM to the master, which stops its workers (SIGKILL would orphan them), then
    /// SIGKILL to the whole group if it lingers.
    fn drop(&mut self) {
        let pid = self.child.id() as libc::pid_t;
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        unsafe { libc::killpg(pid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}
