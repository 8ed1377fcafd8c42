//! A throwaway PostgreSQL for tests: `initdb` into a temporary folder, `postgres` on an
//! ephemeral loopback port, stopped and its folder removed when dropped or when the test
//! process ends (even killed). Debian's `postgresql` package; as root it runs as `postgres`.
//! Standard library only, so the server's store tests can include this file too.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// The password of the `postgres` role over TCP (the socket in the folder trusts everyone).
pub const PASSWORD: &str = "stoa-test";

/// A PostgreSQL server of this test process.
pub struct Postgres {
    root: PathBuf,
    bin: PathBuf,
    port: u16,
    guardian: Option<Guardian>,
    /// TLS on, with the certificate and key in the folder: TCP clients must use it.
    tls: bool,
}

/// The shell that owns a running `postgres`: it stops the server (an immediate shutdown)
/// when its standard input is closed or receives a line, then removes the folder unless the
/// line was `keep`. A test process that dies closes the pipe, so nothing outlives it.
struct Guardian {
    process: Child,
    orders: ChildStdin,
}

/// The script the guardian runs: `$1` the folder, the rest the command starting `postgres`.
const GUARDIAN: &str = r#"root=$1; shift
"$@" 2>&1 </dev/null &
pid=$!
read -r order
kill -QUIT "$pid" 2>/dev/null
wait "$pid"
[ "$order" = keep ] || rm -rf "$root"
"#;

impl Postgres {
    /// Initialises a new cluster and starts it. Panics with the reason if it cannot.
    pub fn start() -> Postgres {
        Postgres::start_inner(None)
    }

    /// Like [`Postgres::start`], with TLS: `cert_pem` (the server's certificate, for
    /// `127.0.0.1`) and `key_pem`; connections over TCP without TLS are refused.
    pub fn start_with_tls(cert_pem: &str, key_pem: &str) -> Postgres {
        Postgres::start_inner(Some((cert_pem, key_pem)))
    }

    fn start_inner(tls: Option<(&str, &str)>) -> Postgres {
        let bin = find_bin();
        let root = make_root();
        std::fs::write(root.join("password"), PASSWORD).expect("password file");
        own_by_postgres(&root);
        let initdb = as_postgres(&bin.join("initdb"))
            .arg("--pgdata")
            .arg(root.join("data"))
            .args(["--username=postgres", "--encoding=UTF8", "--no-sync"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", root.join("password").display()))
            .output()
            .expect("initdb runs");
        assert!(
            initdb.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&initdb.stderr)
        );
        std::fs::create_dir(root.join("socket")).expect("socket folder");
        own_by_postgres(&root.join("socket"));
        if let Some((cert, key)) = tls {
            use std::os::unix::fs::PermissionsExt;
            for (name, pem, mode) in [("server.crt", cert, 0o644), ("server.key", key, 0o600)] {
                let path = root.join(name);
                std::fs::write(&path, pem).expect("TLS file");
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
                own_by_postgres(&path);
            }
            std::fs::write(
                root.join("data/pg_hba.conf"),
                "local all all trust\n\
                 hostssl all all 127.0.0.1/32 scram-sha-256\n\
                 hostnossl all all 127.0.0.1/32 reject\n",
            )
            .expect("pg_hba.conf");
        }
        // A port another process takes between our probe and PostgreSQL's bind is retried.
        for _ in 0..5 {
            let mut pg = Postgres {
                root: root.clone(),
                bin: bin.clone(),
                port: free_port(),
                guardian: None,
                tls: tls.is_some(),
            };
            if pg.launch() {
                return pg;
            }
        }
        panic!("PostgreSQL did not start; see the lines above");
    }

    /// One PostgreSQL for the whole test binary, started on first use.
    pub fn shared() -> &'static Postgres {
        static SHARED: OnceLock<Postgres> = OnceLock::new();
        SHARED.get_or_init(Postgres::start)
    }

    /// The URL of `database` over TCP, with the password.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres:{PASSWORD}@127.0.0.1:{}/{database}",
            self.port
        )
    }

    /// Makes a new empty database and returns its URL.
    pub fn fresh_database(&self) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "stoa_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        self.psql(&format!("CREATE DATABASE {name}"));
        self.url(&name)
    }

    /// Runs one SQL command as `postgres` over the folder's socket; panics if it fails.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_in("postgres", sql)
    }

    /// Runs one SQL command in `database` (a name, or a URL of `fresh_database`); rows come
    /// back one a line, columns separated by `|`.
    pub fn psql_in(&self, database: &str, sql: &str) -> String {
        let database = database.rsplit('/').next().unwrap_or(database);
        let out = Command::new(self.bin.join("psql"))
            .arg("--host")
            .arg(self.root.join("socket"))
            .args(["--port", &self.port.to_string()])
            .args(["--username=postgres", "--no-psqlrc"])
            .arg(format!("--dbname={database}"))
            .args(["--tuples-only", "--no-align", "--set=ON_ERROR_STOP=1"])
            .args(["--command", sql])
            .output()
            .expect("psql runs");
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Stops the server the way a crash would: an immediate shutdown (every connection cut,
    /// no checkpoint, crash recovery at the next start). Returns once it has exited.
    pub fn crash(&mut self) {
        if let Some(guardian) = self.guardian.take() {
            guardian.stop("keep");
        }
    }

    /// Starts the server again on the same folder and port after `crash`.
    pub fn restart(&mut self) {
        assert!(self.guardian.is_none(), "PostgreSQL is running");
        assert!(self.launch(), "PostgreSQL did not restart");
    }

    /// Freezes the server and every one of its processes (SIGSTOP): connections stay open and
    /// queries hang unanswered, as with a database host that stopped responding.
    pub fn pause(&self) {
        self.signal_all(libc::SIGSTOP);
    }

    /// Lets a paused server go on (SIGCONT); the queries that waited are answered.
    pub fn resume(&self) {
        self.signal_all(libc::SIGCONT);
    }

    /// Sends `signal` to the postmaster (its pid file names it) and to its children.
    fn signal_all(&self, signal: i32) {
        let pid_file = std::fs::read_to_string(self.root.join("data/postmaster.pid"))
            .expect("PostgreSQL is running");
        let postmaster: i32 = pid_file
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .expect("a pid in postmaster.pid");
        let mut pids = vec![postmaster];
        let children = format!("/proc/{postmaster}/task/{postmaster}/children");
        pids.extend(
            std::fs::read_to_string(children)
                .expect("the postmaster's children")
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok()),
        );
        for pid in pids {
            // SAFETY: kill has no memory preconditions; these are this test's own processes.
            unsafe { libc::kill(pid, signal) };
        }
    }

    /// Starts `postgres` under a guardian and waits for it to accept connections; false if it
    /// exited first (its log lines are then on this process's standard error).
    fn launch(&mut self) -> bool {
        let mut postgres = as_postgres(&self.bin.join("postgres"));
        postgres
            .arg("-D")
            .arg(self.root.join("data"))
            .args(["-p", &self.port.to_string()])
            .arg("-k")
            .arg(self.root.join("socket"))
            .args(["-c", "listen_addresses=127.0.0.1"])
            // Durability is PostgreSQL's business, not what these tests measure.
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .args(["-c", "max_connections=300"]);
        if self.tls {
            postgres.args(["-c", "ssl=on"]);
            for (setting, file) in [
                ("ssl_cert_file", "server.crt"),
                ("ssl_key_file", "server.key"),
            ] {
                postgres
                    .arg("-c")
                    .arg(format!("{setting}={}", self.root.join(file).display()));
            }
        }
        let mut process = Command::new("sh")
            .arg("-c")
            .arg(GUARDIAN)
            .arg("guardian")
            .arg(&self.root)
            .arg(postgres.get_program())
            .args(postgres.get_args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("sh runs");
        let orders = process.stdin.take().expect("stdin piped");
        let log = BufReader::new(process.stdout.take().expect("stdout piped"));
        let guardian = Guardian { process, orders };
        let mut lines = log.lines();
        let ready = lines.by_ref().map_while(Result::ok).any(|line| {
            let ready = line.contains("database system is ready to accept connections");
            if !ready && (line.contains("FATAL") || line.contains("ERROR")) {
                eprintln!("postgres: {line}");
            }
            ready
        });
        if !ready {
            guardian.stop("keep");
            return false;
        }
        // The server keeps logging; the pipe must be drained or it would block on a write.
        std::thread::spawn(move || lines.for_each(drop));
        self.guardian = Some(guardian);
        true
    }
}

impl Guardian {
    fn stop(mut self, order: &str) {
        writeln!(self.orders, "{order}").ok();
        drop(self.orders);
        self.process.wait().ok();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        match self.guardian.take() {
            Some(guardian) => guardian.stop("remove"),
            None => {
                std::fs::remove_dir_all(&self.root).ok();
            }
        }
    }
}

/// The newest installed PostgreSQL's programs.
fn find_bin() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .expect("PostgreSQL is not installed (Debian: apt-get install postgresql)")
}

fn make_root() -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let root = std::env::temp_dir().join(format!(
        "stoa-pg-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir(&root).expect("temporary folder");
    root
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// PostgreSQL refuses to run as root: as root, its programs run as the `postgres` user.
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("setpriv");
        command
            .args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
            .arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn own_by_postgres(path: &Path) {
    if !is_root() {
        return;
    }
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("id runs");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a postgres user (Debian's postgresql package makes it)")
    };
    std::os::unix::fs::chown(path, Some(id("-u")), Some(id("-g"))).expect("chown");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("an ephemeral port")
        .port()
}
