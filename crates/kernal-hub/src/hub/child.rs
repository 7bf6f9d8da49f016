//! A hub run as a child process of this binary (`kernal hub`) on a free
//! loopback port with a fresh state directory: what the harness and the
//! benchmark start when they are not given `--hub`. A child process, not a
//! thread, so it can be SIGKILLed and its memory and CPU read from /proc.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct ChildHub {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub token: String,
}

impl ChildHub {
    /// Writes `config` (with `hub.admin_token`, `hub.state_dir` and a quiet
    /// log level added) and starts the hub.
    pub fn start(mut config: toml::Table) -> Result<ChildHub, String> {
        let e = |e: std::io::Error| e.to_string();
        let dir = tempfile::tempdir().map_err(e)?;
        let token = format!("child-{}", uuid::Uuid::new_v4().simple());
        let hub = config
            .entry("hub")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let Some(t) = hub.as_table_mut() {
            t.insert("admin_token".into(), token.clone().into());
            t.insert("state_dir".into(), dir.path().display().to_string().into());
        }
        let mut log = toml::Table::new();
        log.insert("level".into(), "warn".into());
        config.insert("log".into(), toml::Value::Table(log));
        let text = toml::to_string(&config).map_err(|e| e.to_string())?;
        std::fs::write(dir.path().join("hub.toml"), text).map_err(e)?;
        let mut hub = ChildHub {
            child: None,
            dir,
            port: 0,
            token,
        };
        hub.spawn()?;
        Ok(hub)
    }

    /// Starts (again) on the same port, config and database. The first
    /// start binds port 0 and reads the port the hub reports (`--addr-file`),
    /// so no other process can take a probed port in between.
    pub fn spawn(&mut self) -> Result<(), String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let addr_file = self.dir.path().join("hub.addr");
        let _ = std::fs::remove_file(&addr_file);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("hub.log"))
            .map_err(|e| e.to_string())?;
        let child = Command::new(exe)
            .arg("hub")
            .arg("--config")
            .arg(self.dir.path().join("hub.toml"))
            .args(["--bind", &format!("127.0.0.1:{}", self.port), "--db"])
            .arg(self.dir.path().join("hub.db"))
            .arg("--addr-file")
            .arg(&addr_file)
            .env_remove("RUST_LOG")
            .env_remove("STATE_DIRECTORY")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start a hub: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(a) = std::fs::read_to_string(&addr_file) {
                if let Ok(sa) = a.trim().parse::<std::net::SocketAddr>() {
                    self.port = sa.port();
                    return Ok(());
                }
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    return Err(format!(
                        "the hub exited ({status}) before serving: {}",
                        self.log_tail(5)
                    ));
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the hub did not start within 60 s: {}",
                    self.log_tail(5)
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The last lines the hub logged, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("hub.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(lines).collect();
        tail.join(" | ")
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the clean shutdown (SIGKILL after 20 s).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Peak resident set (VmHWM) in MiB and CPU seconds (user + system).
    pub fn usage(&self) -> (Option<f64>, Option<f64>) {
        let Some(pid) = self.child.as_ref().map(|c| c.id()) else {
            return (None, None);
        };
        let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
            .map(|kb| kb / 1024.0);
        let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                let rest = s.rsplit(')').next()?.to_string();
                let f: Vec<&str> = rest.split_whitespace().collect();
                let ut: f64 = f.get(11)?.parse().ok()?;
                let st: f64 = f.get(12)?.parse().ok()?;
                let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
                Some((ut + st) / tck)
            });
        (rss, cpu)
    }
}

impl Drop for ChildHub {
    fn drop(&mut self) {
        self.stop();
    }
}
