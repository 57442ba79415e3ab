//! `vm.toml`, the file `splitvm up` reads: parsed with serde (unknown keys
//! refused), checked, and turned into a [`Plan`]: the VMM's command line
//! and one command line per backend. Every error names the file, the line
//! and column, and the field (`vm.cpus`, `blk[1].image`).

use std::ffi::OsString;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::cli::{parse_size, MAX_CPUS};

/// A unix socket path must fit `sun_path` (108 bytes with the NUL).
const SUN_PATH_MAX: usize = 107;

/// Errors in a `vm.toml`.
#[derive(Debug, thiserror::Error)]
pub enum UpConfigError {
    /// The file could not be read.
    #[error("{file}: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// A value is missing, malformed or refused.
    #[error("{file}:{line}:{column}: {field}: {message}")]
    At {
        file: String,
        line: usize,
        column: usize,
        field: String,
        message: String,
    },
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    name: Option<Spanned<String>>,
    run_dir: Option<Spanned<PathBuf>>,
    backend_dir: Option<Spanned<PathBuf>>,
    ready_timeout: Option<Spanned<u64>>,
    vm: Spanned<VmSection>,
    #[serde(default)]
    blk: Vec<Spanned<BlkSection>>,
    #[serde(default)]
    net: Vec<Spanned<NetSection>>,
    #[serde(default)]
    input: Vec<Spanned<InputSection>>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct VmSection {
    kernel: Spanned<PathBuf>,
    initrd: Option<Spanned<PathBuf>>,
    cmdline: Option<String>,
    cpus: Option<Spanned<u16>>,
    memory: Option<Spanned<String>>,
    serial: Option<Spanned<String>>,
    boot: Option<Spanned<String>>,
    api_socket: Option<Spanned<PathBuf>>,
    reconnect_timeout: Option<u64>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct BlkSection {
    socket: Option<Spanned<PathBuf>>,
    image: Spanned<PathBuf>,
    #[serde(default)]
    readonly: bool,
    #[serde(default)]
    direct: bool,
    queues: Option<u16>,
    queue_size: Option<u16>,
    serial: Option<String>,
    #[serde(default)]
    args: Vec<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct NetSection {
    socket: Option<Spanned<PathBuf>>,
    tap: Spanned<String>,
    mac: Option<String>,
    queues: Option<u16>,
    mtu: Option<u16>,
    #[serde(default)]
    args: Vec<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct InputSection {
    socket: Option<Spanned<PathBuf>>,
    evdev: Option<Spanned<PathBuf>>,
    #[serde(default)]
    grab: bool,
    profile: Option<Spanned<String>>,
    event_socket: Option<Spanned<PathBuf>>,
    name: Option<String>,
    #[serde(default)]
    args: Vec<String>,
}

/// One backend process `splitvm up` runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendPlan {
    /// The device name the VMM gives it: kind and position among all
    /// devices (`blk0`, `net1`, `input2`).
    pub name: String,
    /// The backend binary.
    pub binary: PathBuf,
    /// Its arguments, without the socket (`up` passes `--socket-fd`).
    pub args: Vec<OsString>,
    /// The socket path `up` binds and owns.
    pub socket: PathBuf,
    /// Other files the backend creates there (an input event socket),
    /// removed at teardown.
    pub extra_files: Vec<PathBuf>,
}

/// Everything `splitvm up` runs, from a checked `vm.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The file it came from.
    pub file: PathBuf,
    /// The VM's name (default: the file's stem).
    pub name: String,
    /// Sockets, pid and lock files live here.
    pub run_dir: PathBuf,
    /// Arguments of `splitvm run`, after `run`.
    pub vmm_args: Vec<OsString>,
    /// The VMM's API socket (always served: `splitvm down` and `ctl` use it).
    pub api_socket: PathBuf,
    /// Backends in the order the VMM sees their devices.
    pub backends: Vec<BackendPlan>,
    /// How long a backend may take to be ready at startup.
    pub ready_timeout: Duration,
}

/// Line and column (both from 1) of byte `pos` of `text`.
fn line_col(text: &str, pos: usize) -> (usize, usize) {
    let before = &text[..pos.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, col)
}

struct Ctx<'a> {
    file: String,
    text: &'a str,
    /// Relative image and kernel paths are relative to the file's directory.
    base: PathBuf,
}

impl Ctx<'_> {
    fn err(&self, span: Range<usize>, field: &str, message: impl Into<String>) -> UpConfigError {
        let (line, column) = line_col(self.text, span.start);
        UpConfigError::At {
            file: self.file.clone(),
            line,
            column,
            field: field.to_string(),
            message: message.into(),
        }
    }

    fn input_path(&self, p: &Spanned<PathBuf>, field: &str) -> Result<PathBuf, UpConfigError> {
        let path = self.base.join(p.get_ref());
        match std::fs::metadata(&path) {
            Ok(_) => Ok(path),
            Err(e) => Err(self.err(p.span(), field, format!("{}: {e}", path.display()))),
        }
    }
}

/// The serde path of an error (`vm.cpus`, `blk[0].image`), with the key an
/// "unknown field" or "missing field" message names appended.
fn field_of(path: &serde_path_to_error::Path, message: &str) -> String {
    use serde_path_to_error::Segment;
    let mut f = String::new();
    for seg in path.iter() {
        match seg {
            // toml::Spanned's private wrapper key is no field of the file.
            Segment::Map { key } if key.starts_with("$__") => {}
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !f.is_empty() {
                    f.push('.');
                }
                f.push_str(key);
            }
            Segment::Seq { index } => f.push_str(&format!("[{index}]")),
            Segment::Unknown => {}
        }
    }
    for marker in ["unknown field `", "missing field `"] {
        if let Some(rest) = message.split(marker).nth(1) {
            if let Some(key) = rest.split('`').next() {
                if !f.ends_with(key) {
                    f = if f.is_empty() {
                        key.to_string()
                    } else {
                        format!("{f}.{key}")
                    };
                }
            }
        }
    }
    if f.is_empty() {
        "(top level)".into()
    } else {
        f
    }
}

fn parse(ctx: &Ctx) -> Result<FileConfig, UpConfigError> {
    let de = toml::de::Deserializer::parse(ctx.text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        ctx.err(span, "(syntax)", e.message().trim())
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = field_of(e.path(), e.inner().message());
        let span = e.inner().span().unwrap_or(0..0);
        ctx.err(span, &field, e.inner().message().trim())
    })
}

/// Reads and checks `file`. `self_exe` is the running `splitvm`, whose
/// directory holds the backend binaries unless `backend_dir` says otherwise.
pub fn load(file: &Path, self_exe: &Path) -> Result<Plan, UpConfigError> {
    let text = std::fs::read_to_string(file).map_err(|source| UpConfigError::Read {
        file: file.display().to_string(),
        source,
    })?;
    plan(file, &text, self_exe)
}

/// The run directory of the VM `file` describes (for `splitvm down`);
/// checks only the syntax and the keys.
pub fn locate(file: &Path) -> Result<PathBuf, UpConfigError> {
    let text = std::fs::read_to_string(file).map_err(|source| UpConfigError::Read {
        file: file.display().to_string(),
        source,
    })?;
    let ctx = Ctx::new(file, &text);
    let cfg = parse(&ctx)?;
    Ok(name_and_run_dir(file, &ctx, &cfg)?.1)
}

impl<'a> Ctx<'a> {
    fn new(file: &Path, text: &'a str) -> Ctx<'a> {
        let base = file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        Ctx {
            file: file.display().to_string(),
            text,
            base,
        }
    }
}

fn name_and_run_dir(
    file: &Path,
    ctx: &Ctx,
    cfg: &FileConfig,
) -> Result<(String, PathBuf), UpConfigError> {
    let name = match &cfg.name {
        Some(n) => {
            let ok = !n.get_ref().is_empty()
                && n.get_ref()
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !ok {
                return Err(ctx.err(n.span(), "name", "use letters, digits, '-', '_' or '.'"));
            }
            n.get_ref().clone()
        }
        None => file
            .file_stem()
            .map_or_else(|| "vm".into(), |s| s.to_string_lossy().into_owned()),
    };
    let run_dir = match &cfg.run_dir {
        Some(d) => ctx.base.join(d.get_ref()),
        None => default_run_dir(&name),
    };
    Ok((name, run_dir))
}

/// Checks `text` (the contents of `file`) and builds the plan.
pub fn plan(file: &Path, text: &str, self_exe: &Path) -> Result<Plan, UpConfigError> {
    let ctx = Ctx::new(file, text);
    let cfg = parse(&ctx)?;
    let (name, run_dir) = name_and_run_dir(file, &ctx, &cfg)?;
    let backend_dir = match &cfg.backend_dir {
        Some(d) => ctx.base.join(d.get_ref()),
        None => self_exe
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
    };
    let binary = |prog: &str| -> Result<PathBuf, UpConfigError> {
        let p = backend_dir.join(prog);
        if p.is_file() {
            return Ok(p);
        }
        let msg = format!("{} not found", p.display());
        Err(match &cfg.backend_dir {
            Some(d) => ctx.err(d.span(), "backend_dir", msg),
            None => ctx.err(
                0..0,
                "backend_dir",
                format!("{msg} (default: next to splitvm)"),
            ),
        })
    };
    let socket = |s: &Option<Spanned<PathBuf>>, dev: &str, field: &str| {
        let (p, span) = match s {
            Some(s) => (run_dir.join(s.get_ref()), s.span()),
            None => (run_dir.join(format!("{dev}.sock")), 0..0),
        };
        if p.as_os_str().len() > SUN_PATH_MAX {
            return Err(ctx.err(
                span,
                field,
                format!("{} is longer than a socket path may be", p.display()),
            ));
        }
        Ok(p)
    };

    let vm = cfg.vm.get_ref();
    let mut vmm_args: Vec<OsString> = vec!["--kernel".into()];
    vmm_args.push(ctx.input_path(&vm.kernel, "vm.kernel")?.into());
    if let Some(i) = &vm.initrd {
        vmm_args.push("--initrd".into());
        vmm_args.push(ctx.input_path(i, "vm.initrd")?.into());
    }
    if let Some(c) = &vm.cmdline {
        vmm_args.extend(["--cmdline".into(), c.into()]);
    }
    if let Some(c) = &vm.cpus {
        if !(1..=MAX_CPUS).contains(c.get_ref()) {
            return Err(ctx.err(c.span(), "vm.cpus", format!("must be 1..={MAX_CPUS}")));
        }
        vmm_args.extend(["--cpus".into(), c.get_ref().to_string().into()]);
    }
    if let Some(m) = &vm.memory {
        parse_size(m.get_ref()).map_err(|e| ctx.err(m.span(), "vm.memory", e))?;
        vmm_args.extend(["--memory".into(), m.get_ref().into()]);
    }
    if let Some(s) = &vm.serial {
        let v = s.get_ref();
        let file = v.strip_prefix("file:").filter(|p| !p.is_empty());
        if v != "stdout" && file.is_none() {
            return Err(ctx.err(
                s.span(),
                "vm.serial",
                "expected \"stdout\" or \"file:PATH\"",
            ));
        }
        let arg = match file {
            Some(p) => format!("file:{}", ctx.base.join(p).display()),
            None => v.clone(),
        };
        vmm_args.extend(["--serial".into(), arg.into()]);
    }
    if let Some(b) = &vm.boot {
        if !matches!(b.get_ref().as_str(), "linux" | "pvh") {
            return Err(ctx.err(b.span(), "vm.boot", "expected \"linux\" or \"pvh\""));
        }
        vmm_args.extend(["--boot".into(), b.get_ref().into()]);
    }
    if let Some(t) = vm.reconnect_timeout {
        vmm_args.extend(["--reconnect-timeout".into(), t.to_string().into()]);
    }
    let api_socket = socket(&vm.api_socket, "api", "vm.api_socket")?;
    vmm_args.extend(["--api-socket".into(), api_socket.clone().into()]);

    let mut backends = Vec::new();
    for (i, b) in cfg.blk.iter().enumerate() {
        let (b, dev) = (b.get_ref(), format!("blk{}", backends.len()));
        let mut args: Vec<OsString> = vec!["--image".into()];
        args.push(ctx.input_path(&b.image, &format!("blk[{i}].image"))?.into());
        flag(&mut args, b.readonly, "--readonly");
        flag(&mut args, b.direct, "--direct");
        opt(&mut args, "--queues", b.queues);
        opt(&mut args, "--queue-size", b.queue_size);
        opt(&mut args, "--serial", b.serial.as_ref());
        args.extend(b.args.iter().map(OsString::from));
        backends.push(BackendPlan {
            socket: socket(&b.socket, &dev, &format!("blk[{i}].socket"))?,
            name: dev,
            binary: binary("splitvm-blk")?,
            args,
            extra_files: vec![],
        });
    }
    for (i, n) in cfg.net.iter().enumerate() {
        let (n, dev) = (n.get_ref(), format!("net{}", backends.len()));
        if n.tap.get_ref().is_empty() {
            return Err(ctx.err(n.tap.span(), &format!("net[{i}].tap"), "empty tap name"));
        }
        let mut args: Vec<OsString> = vec!["--tap".into(), n.tap.get_ref().into()];
        opt(&mut args, "--mac", n.mac.as_ref());
        opt(&mut args, "--queues", n.queues);
        opt(&mut args, "--mtu", n.mtu);
        args.extend(n.args.iter().map(OsString::from));
        backends.push(BackendPlan {
            socket: socket(&n.socket, &dev, &format!("net[{i}].socket"))?,
            name: dev,
            binary: binary("splitvm-net")?,
            args,
            extra_files: vec![],
        });
    }
    for (i, s) in cfg.input.iter().enumerate() {
        let (inp, dev) = (s.get_ref(), format!("input{}", backends.len()));
        let field = |k: &str| format!("input[{i}].{k}");
        let mut args: Vec<OsString> = Vec::new();
        let mut extra_files = Vec::new();
        match (&inp.evdev, &inp.profile, &inp.event_socket) {
            (Some(e), None, None) => {
                args.extend(["--evdev".into(), ctx.input_path(e, &field("evdev"))?.into()]);
                flag(&mut args, inp.grab, "--grab");
            }
            (None, Some(p), ev) => {
                if !matches!(
                    p.get_ref().as_str(),
                    "keyboard" | "mouse" | "tablet" | "touch"
                ) {
                    return Err(ctx.err(
                        p.span(),
                        &field("profile"),
                        "expected keyboard, mouse, tablet or touch",
                    ));
                }
                let ev = socket(ev, &format!("{dev}-events"), &field("event_socket"))?;
                args.extend(["--profile".into(), p.get_ref().into()]);
                args.extend(["--event-socket".into(), ev.clone().into()]);
                opt(&mut args, "--name", inp.name.as_ref());
                extra_files.push(ev);
            }
            _ => {
                return Err(ctx.err(
                    s.span(),
                    &format!("input[{i}]"),
                    "give either evdev = PATH, or profile = NAME (with an optional event_socket)",
                ))
            }
        }
        args.extend(inp.args.iter().map(OsString::from));
        backends.push(BackendPlan {
            socket: socket(&inp.socket, &dev, &field("socket"))?,
            name: dev,
            binary: binary("splitvm-input")?,
            args,
            extra_files,
        });
    }
    let mut seen: Vec<&Path> = vec![&api_socket];
    for b in &backends {
        if seen.contains(&b.socket.as_path()) {
            return Err(ctx.err(
                0..0,
                &b.name,
                format!("{} is used twice", b.socket.display()),
            ));
        }
        seen.push(&b.socket);
    }
    // The VMM orders its devices disks, nets, inputs: as `backends` is.
    for b in &backends {
        let kind = b.name.trim_end_matches(|c: char| c.is_ascii_digit());
        let flag = if kind == "blk" { "disk" } else { kind };
        vmm_args.push(format!("--{flag}").into());
        vmm_args.push(format!("socket={}", b.socket.display()).into());
    }
    let ready_timeout = Duration::from_secs(cfg.ready_timeout.map_or(30, |t| *t.get_ref()));
    Ok(Plan {
        file: file.to_path_buf(),
        name,
        run_dir,
        vmm_args,
        api_socket,
        backends,
        ready_timeout,
    })
}

fn flag(args: &mut Vec<OsString>, on: bool, name: &str) {
    if on {
        args.push(name.into());
    }
}

fn opt<T: ToString>(args: &mut Vec<OsString>, name: &str, v: Option<T>) {
    if let Some(v) = v {
        args.extend([name.into(), v.to_string().into()]);
    }
}

/// `$XDG_RUNTIME_DIR/splitvm-NAME`, or the temporary directory's.
pub fn default_run_dir(name: &str) -> PathBuf {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    base.join(format!("splitvm-{name}"))
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
