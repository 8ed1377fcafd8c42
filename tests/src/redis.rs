//! A throwaway Redis for tests: Debian's `redis-server` on an ephemeral loopback port, with a
//! generated `redis.conf` in a temporary folder, no persistence, in its own process group;
//! killed when dropped. Standard library and `tempfile` only, so the server's tests can include
//! this file too (`#[path]`).

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A throwaway `redis-server`: no persistence, loopback only, its own process group.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Redis {
    pub fn start() -> Redis {
        let mut redis = Redis {
            child: None,
            port: 0,
            dir: tempfile::tempdir().unwrap(),
        };
        // The port is chosen by the kernel, then given to Redis; another process taking it
        // in between makes Redis fail to start, and a new one is tried.
        for _ in 0..5 {
            redis.port = free_port();
            if redis.launch() {
                return redis;
            }
        }
        panic!("redis-server did not start");
    }

    /// Starts `redis-server` on `self.port`; true once it answers PING.
    fn launch(&mut self) -> bool {
        let conf = self.dir.path().join("redis.conf");
        std::fs::write(
            &conf,
            format!(
                "port {}\nbind 127.0.0.1\nprotected-mode yes\ndir {}\nsave \"\"\nappendonly no\n\
                 daemonize no\nlogfile \"\"\nloglevel warning\n",
                self.port,
                self.dir.path().display()
            ),
        )
        .unwrap();
        let child = Command::new("redis-server")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .expect("redis-server runs (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.cli(&["PING"]).trim() == "PONG" {
                return true;
            }
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `redis-cli` against this server; its standard output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A new, empty Redis on the same port (what a restart without persistence gives).
    pub fn restart(&mut self) {
        self.kill();
        assert!(self.launch(), "redis-server did not restart on its port");
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
