//! The processes the harness starts, and the guarantees that they end with it.
//!
//! Each child gets `PR_SET_PDEATHSIG(SIGKILL)`, so it dies when the harness dies, even from
//! SIGKILL. The kernel sends that signal when the *thread* that forked the child exits, not the
//! process, and test threads (and Tokio's blocking threads) come and go; so every child is
//! forked by one spawner thread that lives as long as the process. Each child also gets its own
//! process group, so a Ctrl-C in the terminal reaches only the harness, which then stops its
//! children in order.

use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

type SpawnJob = (Command, mpsc::Sender<io::Result<Child>>);

/// Forks `cmd` from the process-lifetime spawner thread (see the module doc).
fn spawn_from_long_lived_thread(cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnJob>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("rt-control-plane-spawner".into())
            .spawn(move || {
                // Ends only with the process: the sender lives in a static.
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("start the control plane's spawner thread");
        tx
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    tx.send((cmd, reply_tx))
        .map_err(|_| io::Error::other("spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("spawner thread is gone"))?
}

/// One started process: its name, its child handle and its log file (stdout and stderr).
pub struct Proc {
    pub name: &'static str,
    child: Child,
    log: PathBuf,
    exited: Option<ExitStatus>,
}

impl Proc {
    /// Starts `program args...` with stdout and stderr appended to `log`.
    pub fn start(
        name: &'static str,
        program: &Path,
        args: &[String],
        log: PathBuf,
    ) -> io::Result<Self> {
        Self::start_with_env(name, program, args, &[], log)
    }

    /// [`Self::start`] with extra environment variables.
    pub fn start_with_env(
        name: &'static str,
        program: &Path,
        args: &[String],
        env: &[(&str, &std::ffi::OsStr)],
        log: PathBuf,
    ) -> io::Result<Self> {
        let out = File::create(&log)?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // SAFETY: only async-signal-safe libc calls between fork and exec.
        let parent = unsafe { libc::getpid() };
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died between fork and prctl: then nobody would kill us.
                if libc::getppid() != parent {
                    return Err(io::Error::other("the harness exited during spawn"));
                }
                if libc::setpgid(0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = spawn_from_long_lived_thread(cmd).map_err(|e| {
            io::Error::new(e.kind(), format!("starting {}: {e}", program.display()))
        })?;
        Ok(Self {
            name,
            child,
            log,
            exited: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` once the process has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// SIGTERM, up to `grace` for a clean exit, then SIGKILL. Idempotent.
    pub fn stop(&mut self, grace: Duration) {
        if self.exit_status().is_some() {
            return;
        }
        // SAFETY: plain kill(2) on our own child's pid; the child is not yet reaped, so the
        // pid cannot have been reused.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let until = Instant::now() + grace;
        while Instant::now() < until {
            if self.exit_status().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        self.exited = self.child.wait().ok();
    }

    /// Resident memory, from /proc (None once exited).
    pub fn rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        parse_vm_rss_kib(&status).map(|kib| kib * 1024)
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of the log, headed by the process name and exit state.
    pub fn log_tail(&mut self, lines: usize) -> String {
        let state = match self.exit_status() {
            Some(s) => format!("exited: {s}"),
            None => "running".to_string(),
        };
        let text = std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| format!("(cannot read {}: {e})", self.log.display()));
        format!(
            "----- {} (pid {}, {state}), last {lines} lines of {} -----\n{}",
            self.name,
            self.child.id(),
            self.log.display(),
            super::config::tail(&text, lines)
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(2));
    }
}

/// `VmRSS` of a /proc/PID/status text, in KiB.
pub fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rss() {
        assert_eq!(
            parse_vm_rss_kib("Name:\tetcd\nVmRSS:\t   51234 kB\nRssAnon: 1 kB\n"),
            Some(51234)
        );
        assert_eq!(parse_vm_rss_kib("Name: x\n"), None);
    }

    #[test]
    fn a_started_process_is_logged_stopped_and_reaped() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sh.log");
        let mut p = Proc::start(
            "sh",
            Path::new("/bin/sh"),
            &["-c".into(), "echo hello; exec sleep 30".into()],
            log,
        )
        .unwrap();
        // Its own process group, so a terminal Ctrl-C does not reach it directly.
        let pgid = unsafe { libc::getpgid(p.pid() as libc::pid_t) };
        assert_eq!(pgid, p.pid() as libc::pid_t);
        let until = Instant::now() + Duration::from_secs(5);
        while !p.log_tail(5).contains("hello") {
            assert!(Instant::now() < until, "no output: {}", p.log_tail(5));
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(p.rss_bytes().is_some());
        assert!(p.exit_status().is_none());
        p.stop(Duration::from_secs(2));
        assert!(p.exit_status().is_some());
        assert!(p.rss_bytes().is_none());
    }

    #[test]
    fn children_die_with_the_process_that_started_them() {
        // This test binary, re-run as a helper process, starts `sleep` through Proc, writes
        // its pid to a file and waits; we SIGKILL the helper: the sleep must die too.
        if let Some(pid_file) = std::env::var_os("RT_PDEATHSIG_PID_FILE") {
            let pid_file = PathBuf::from(pid_file);
            let log = pid_file.with_extension("log");
            let p = Proc::start("sleep", Path::new("/bin/sleep"), &["60".into()], log).unwrap();
            std::fs::write(&pid_file, p.pid().to_string()).unwrap();
            std::mem::forget(p);
            std::thread::sleep(Duration::from_secs(60));
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("sleep.pid");
        let mut helper = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "control_plane::process::tests::children_die_with_the_process_that_started_them",
                "--test-threads=1",
            ])
            .env("RT_PDEATHSIG_PID_FILE", &pid_file)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let until = Instant::now() + Duration::from_secs(10);
        let pid: i32 = loop {
            if let Some(pid) = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.parse().ok())
            {
                break pid;
            }
            assert!(
                helper.try_wait().unwrap().is_none(),
                "helper ended before starting sleep"
            );
            assert!(Instant::now() < until, "helper did not start sleep");
            std::thread::sleep(Duration::from_millis(20));
        };
        let alive = |pid: i32| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .is_ok_and(|s| !s.contains("State:\tZ"))
        };
        assert!(alive(pid));
        helper.kill().unwrap();
        helper.wait().unwrap();
        // The killed sleep is reparented and reaped by init (or is a zombie for a moment).
        let until = Instant::now() + Duration::from_secs(5);
        while alive(pid) {
            assert!(
                Instant::now() < until,
                "pid {pid} outlived the process that started it"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
