//! The deployment examples in `examples/`: the Kubernetes manifests pass
//! yamllint and validate against a fixed Kubernetes version (offline), the
//! systemd unit passes `systemd-analyze verify`, and the ring file the
//! Kubernetes entrypoint writes is the same for every pod and makes a ring
//! of real `ringhost` processes.
//!
//! A missing tool (yamllint, kubernetes-validate, systemd-analyze, sh)
//! skips its test with a message, except under CI (`CI` set), where it
//! fails: `.ci/run` installs them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The Kubernetes version the manifests are validated against.
const KUBERNETES_VERSION: &str = "1.33.0";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn kubernetes_dir() -> PathBuf {
    repo().join("examples/kubernetes")
}

/// Every manifest (`*.yaml`, not the hidden yamllint config), sorted.
fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(kubernetes_dir())
        .expect("examples/kubernetes")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yaml")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    assert!(files.len() >= 4, "the manifests: {files:?}");
    files
}

/// `tool` on `PATH`; `Ok(None)` (the test is skipped, with a message) when
/// it is missing on a developer machine; an error under CI (`ci`), where a
/// missing tool fails the test.
fn tool_or_skip(tool: &str, ci: bool) -> Result<Option<PathBuf>, String> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(tool))
            .find(|p| p.is_file())
    });
    match found {
        Some(p) => Ok(Some(p)),
        None if ci => Err(format!(
            "{tool} is not installed, and CI is set: .ci/run installs it"
        )),
        None => {
            eprintln!("skipped: {tool} not installed (under CI this fails)");
            Ok(None)
        }
    }
}

fn tool(name: &str) -> Option<PathBuf> {
    tool_or_skip(name, std::env::var_os("CI").is_some()).unwrap_or_else(|e| panic!("{e}"))
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn a_missing_tool_skips_locally_and_fails_under_ci() {
    let absent = "ringhost-no-such-tool";
    assert_eq!(tool_or_skip(absent, false), Ok(None));
    let err = tool_or_skip(absent, true).unwrap_err();
    assert!(err.contains(absent) && err.contains(".ci/run"), "{err}");
    assert!(matches!(tool_or_skip("sh", true), Ok(Some(_))));
}

#[test]
fn the_kubernetes_manifests_pass_yamllint() {
    let Some(yamllint) = tool("yamllint") else {
        return;
    };
    let out = Command::new(yamllint)
        .arg("--strict")
        .arg("-c")
        .arg(kubernetes_dir().join(".yamllint.yaml"))
        .args(manifests())
        .output()
        .expect("run yamllint");
    assert!(out.status.success(), "yamllint:\n{}", text(&out));
}

#[test]
fn the_kubernetes_manifests_validate_against_a_fixed_kubernetes_version() {
    let Some(mut validate) = kubernetes_validate() else {
        return;
    };
    let files = manifests();
    let out = validate
        .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
        .args(&files)
        .output()
        .expect("run kubernetes-validate");
    let said = text(&out);
    assert!(out.status.success(), "kubernetes-validate:\n{said}");
    // One "passed" line per resource: a file it could not read as a
    // resource would not fail it.
    assert_eq!(
        said.matches(" passed for resource ").count(),
        files.len(),
        "{said}"
    );
}

/// The `kubernetes-validate` command: on `PATH`, or the module of the
/// `python3` on `PATH` when pip put the command elsewhere.
fn kubernetes_validate() -> Option<Command> {
    let ci = std::env::var_os("CI").is_some();
    if let Ok(Some(path)) = tool_or_skip("kubernetes-validate", false) {
        return Some(Command::new(path));
    }
    let module = Command::new("python3")
        .args(["-c", "import kubernetes_validate"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if module {
        let mut command = Command::new("python3");
        command.args(["-m", "kubernetes_validate"]);
        return Some(command);
    }
    tool_or_skip("kubernetes-validate", ci).unwrap_or_else(|e| panic!("{e}"))?;
    None
}

/// The ring file the entrypoint script (from the ConfigMap) writes, and
/// the command it runs (`RINGHOST_BIN=echo` prints it), for one pod.
struct Entrypoint {
    ring: String,
    command: String,
}

/// The script in `configmap.yaml`: the block under `ring-entrypoint.sh: |`,
/// its indentation removed.
fn entrypoint_script() -> String {
    let yaml = std::fs::read_to_string(kubernetes_dir().join("configmap.yaml")).expect("read");
    let mut lines = yaml
        .lines()
        .skip_while(|l| l.trim() != "ring-entrypoint.sh: |");
    assert!(
        lines.next().is_some(),
        "configmap.yaml holds ring-entrypoint.sh"
    );
    let mut script = String::new();
    for line in lines {
        if !line.is_empty() && !line.starts_with("    ") {
            break;
        }
        script.push_str(line.strip_prefix("    ").unwrap_or(""));
        script.push('\n');
    }
    script
}

/// Runs the script as pod `pod` of a StatefulSet of `replicas`.
fn run_entrypoint(sh: &Path, dir: &Path, pod: &str, replicas: &str, ip: &str) -> Output {
    let script = dir.join("ring-entrypoint.sh");
    std::fs::write(&script, entrypoint_script()).expect("write the script");
    Command::new(sh)
        .arg(&script)
        .args(["--data-dir", "/var/lib/ringhost"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RINGHOST_BIN", "echo")
        .env("RINGHOST_REPLICAS", replicas)
        .env("RINGHOST_SERVICE", "ringhost")
        .env("POD_NAMESPACE", "prod")
        .env("POD_NAME", pod)
        .env("POD_IP", ip)
        .env("RINGHOST_RING_FILE", dir.join(pod).join("ring"))
        .output()
        .expect("run the entrypoint")
}

fn entrypoint_ok(sh: &Path, dir: &Path, pod: &str, replicas: &str, ip: &str) -> Entrypoint {
    let out = run_entrypoint(sh, dir, pod, replicas, ip);
    assert!(out.status.success(), "{pod}: {}", text(&out));
    Entrypoint {
        ring: std::fs::read_to_string(dir.join(pod).join("ring")).expect("the ring file"),
        command: String::from_utf8_lossy(&out.stdout).trim().to_string(),
    }
}

#[test]
fn the_entrypoint_writes_the_same_ring_file_in_every_pod_and_names_its_member() {
    let Some(sh) = tool("sh") else { return };
    let dir = TempDir::new("entrypoint");
    let expected = "ringhost-0 = \"ringhost-0.ringhost.prod.svc.cluster.local:3000\"\n\
                    ringhost-1 = \"ringhost-1.ringhost.prod.svc.cluster.local:3000\"\n\
                    ringhost-2 = \"ringhost-2.ringhost.prod.svc.cluster.local:3000\"\n";
    for i in 0..3 {
        let pod = format!("ringhost-{i}");
        let got = entrypoint_ok(&sh, &dir.0, &pod, "3", &format!("10.1.0.{i}"));
        assert_eq!(got.ring, expected, "{pod}");
        let ring = dir.0.join(&pod).join("ring");
        assert_eq!(
            got.command,
            format!(
                "--ring {} --name {pod} --listen 10.1.0.{i}:3000 --admin 0.0.0.0:4000 \
                 --data-dir /var/lib/ringhost",
                ring.display()
            )
        );
    }
    // An IPv6 pod address is bracketed, and the admin API listens on
    // IPv6 too.
    let v6 = entrypoint_ok(&sh, &dir.0, "ringhost-1", "3", "fd00::7");
    assert!(
        v6.command
            .contains("--listen [fd00::7]:3000 --admin [::]:4000"),
        "{}",
        v6.command
    );
    // A pod past RINGHOST_REPLICAS (`kubectl scale` alone) says so and
    // runs nothing; so does a replica count that is not a number.
    let out = run_entrypoint(&sh, &dir.0, "ringhost-3", "3", "10.1.0.3");
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("pod 'ringhost-3' is outside the ring of 3 members")
            && !said.contains("--ring"),
        "{said}"
    );
    let out = run_entrypoint(&sh, &dir.0, "ringhost-0", "three", "10.1.0.0");
    assert!(!out.status.success());
    assert!(
        text(&out).contains("RINGHOST_REPLICAS must be a number"),
        "{}",
        text(&out)
    );
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "ringhost-it-{what}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("after 1970")
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Member processes, killed and reaped on drop (also when a test fails).
#[derive(Default)]
struct Members(Vec<Child>);

impl Drop for Members {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Members {
    /// A member that could not bind its port (exit code 3), if any.
    fn port_taken(&mut self) -> bool {
        self.0.iter_mut().any(|c| {
            matches!(c.try_wait(), Ok(Some(s)) if s.code() == Some(i32::from(ringhost::EXIT_CANNOT_BIND)))
        })
    }
}

/// Why a ring could not be tried on these ports.
struct PortTaken;

/// Runs `ringhost ARGS` with the cluster key and returns its output.
fn ringhost(key: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringhost"))
        .args(args)
        .env("RINGHOST_CLUSTER_KEY_FILE", key)
        .stdin(Stdio::null())
        .output()
        .expect("run ringhost")
}

/// Waits until `done` holds, checking every 100 ms; `Err` when a member
/// could not bind its port; panics at the deadline naming `what`.
fn wait_until(
    members: &mut Members,
    within: Duration,
    what: &str,
    mut done: impl FnMut() -> Result<(), String>,
) -> Result<(), PortTaken> {
    let deadline = Instant::now() + within;
    loop {
        let last = match done() {
            Ok(()) => return Ok(()),
            Err(last) => last,
        };
        if members.port_taken() {
            return Err(PortTaken);
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {within:?}; last: {last}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The ring file of pod ringhost-0, with each member's DNS name and port
/// replaced by `localhost` and a port of its own (the names stay).
fn on_localhost(ring: &str, ports: &[u16]) -> String {
    let mut out = ring.to_string();
    for (i, port) in ports.iter().enumerate() {
        let dns = format!("ringhost-{i}.ringhost.prod.svc.cluster.local:3000");
        assert!(out.contains(&dns), "{dns} in {ring}");
        out = out.replace(&dns, &format!("localhost:{port}"));
    }
    out
}

/// Starts member `i` of `ring` as the entrypoint would (by name, its ring
/// port on its own address), logging to a file in `dir`.
fn start_member(dir: &Path, ring: &Path, key: &Path, i: usize, port: u16) -> Child {
    let log = std::fs::File::create(dir.join(format!("member-{i}.log"))).expect("log file");
    Command::new(env!("CARGO_BIN_EXE_ringhost"))
        .arg("--ring")
        .arg(ring)
        .args(["--name", &format!("ringhost-{i}")])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin", "127.0.0.1:0", "--cache-dir", "none"])
        .args(["--station", "tick", "--delay-ms", "20"])
        .env("RINGHOST_CLUSTER_KEY_FILE", key)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .spawn()
        .expect("start a member")
}

/// A lone ringhost-0 runs the particle by itself; then ringhost-1 and -2
/// start and every member is live in one ring.
fn form_ring(dir: &Path, ring_file: &str, key: &Path, base: u16) -> Result<(), PortTaken> {
    let ports = [base, base + 1, base + 2];
    let ring = dir.join("ring-localhost");
    std::fs::write(&ring, on_localhost(ring_file, &ports)).expect("write the ring");
    let to = format!("127.0.0.1:{}", ports[0]);
    let mut members = Members::default();
    members.0.push(start_member(dir, &ring, key, 0, ports[0]));

    // Alone, member 0 makes the particle and it comes back to it.
    let mut first_visits = None;
    wait_until(
        &mut members,
        Duration::from_secs(30),
        "a lone member's laps",
        || {
            let out = ringhost(key, &["status", "--to", &to, "--json"]);
            let report: serde_json::Value =
                serde_json::from_slice(&out.stdout).map_err(|_| text(&out))?;
            let visits = report["visits"].as_u64().unwrap_or(0);
            match first_visits {
                Some(first) if visits > first => Ok(()),
                _ => {
                    first_visits.get_or_insert(visits);
                    Err(format!("visits {visits}"))
                }
            }
        },
    )?;

    for (i, &port) in ports.iter().enumerate().skip(1) {
        members.0.push(start_member(dir, &ring, key, i, port));
    }
    wait_until(
        &mut members,
        Duration::from_secs(30),
        "all three members live",
        || {
            let out = ringhost(key, &["members", "--to", &to]);
            if out.status.success() {
                Ok(())
            } else {
                Err(text(&out))
            }
        },
    )?;
    Ok(())
}

#[test]
fn members_started_from_generated_ring_files_form_a_ring_over_host_names() {
    let Some(sh) = tool("sh") else { return };
    let dir = TempDir::new("k8s-ring");
    let rings: Vec<String> = (0..3)
        .map(|i| entrypoint_ok(&sh, &dir.0, &format!("ringhost-{i}"), "3", "10.1.0.1").ring)
        .collect();
    assert!(rings.iter().all(|r| *r == rings[0]), "{rings:?}");
    let key = dir.0.join("cluster.key");
    let out = Command::new(env!("CARGO_BIN_EXE_ringhost"))
        .args(["keygen", "--cluster", "--out"])
        .arg(&key)
        .output()
        .expect("run ringhost keygen");
    assert!(out.status.success(), "{}", text(&out));

    let seed = u64::from(std::process::id())
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_nanos() as u64;
    for attempt in 0..4u64 {
        // Below the kernel's ephemeral range (32768+), above `up`'s tests.
        let base = 30_000 + ((seed.wrapping_mul(7919) + attempt * 631) % 2_700) as u16;
        match form_ring(&dir.0, &rings[0], &key, base) {
            Ok(()) => return,
            Err(PortTaken) => eprintln!("a port of {base}-{} is taken; trying others", base + 2),
        }
    }
    panic!("no free ports for three members");
}

fn systemd_unit() -> String {
    std::fs::read_to_string(repo().join("examples/systemd/ringhost@.service")).expect("the unit")
}

/// The unit in a directory of its own, with ExecStart's binary replaced
/// by the test build so that `verify` finds it.
fn unit_with_test_binary(dir: &Path) -> PathBuf {
    let unit = systemd_unit();
    assert!(
        unit.contains("ExecStart=/usr/local/bin/ringhost "),
        "{unit}"
    );
    let unit = unit.replace(
        "ExecStart=/usr/local/bin/ringhost ",
        &format!("ExecStart={} ", env!("CARGO_BIN_EXE_ringhost")),
    );
    let path = dir.join("ringhost@.service");
    std::fs::write(&path, unit).expect("write the unit");
    path
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify_and_security() {
    let Some(analyze) = tool("systemd-analyze") else {
        return;
    };
    let dir = TempDir::new("systemd");
    let template = unit_with_test_binary(&dir.0);
    // An instance of the template, as `systemctl start ringhost@3000`.
    let out = Command::new(&analyze)
        .args(["verify", "--man=no"])
        .arg(dir.0.join("ringhost@3000.service"))
        .current_dir(&dir.0)
        .output()
        .expect("run systemd-analyze verify");
    let said = text(&out);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify:\n{said}"
    );
    // The hardening, as systemd scores it: at most 2.0 of 10 ("OK").
    let out = Command::new(&analyze)
        .args(["security", "--offline=yes", "--threshold=20", "--no-pager"])
        .arg(&template)
        .current_dir(&dir.0)
        .output()
        .expect("run systemd-analyze security");
    assert!(
        out.status.success(),
        "systemd-analyze security:\n{}",
        text(&out)
    );
}

#[test]
fn the_systemd_unit_is_hardened_but_lets_stations_compile() {
    let unit = systemd_unit();
    let set = |key: &str| unit.lines().any(|l| l.trim() == key);
    for key in [
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
        "StateDirectory=ringhost/%i",
        "Restart=on-failure",
    ] {
        assert!(set(key), "{key} is not in the unit");
    }
    // Compiling a station makes written memory executable.
    assert!(
        !unit
            .lines()
            .any(|l| l.trim_start().starts_with("MemoryDenyWriteExecute")),
        "MemoryDenyWriteExecute stops every station from compiling"
    );
}
