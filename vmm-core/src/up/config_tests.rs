//! The broken-file table of `splitvm up` and the annotated example.

use super::*;

/// A directory with a kernel, a disk image and the three backend
/// binaries (empty files), like a build tree.
fn tree() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for f in [
        "vmlinux",
        "disk.img",
        "splitvm",
        "splitvm-blk",
        "splitvm-net",
        "splitvm-input",
    ] {
        std::fs::write(d.path().join(f), b"").unwrap();
    }
    d
}

fn check(dir: &Path, text: &str) -> Result<Plan, UpConfigError> {
    plan(&dir.join("vm.toml"), text, &dir.join("splitvm"))
}

const GOOD: &str = r#"
name = "t"
run_dir = "run"
[vm]
kernel = "vmlinux"
cpus = 2
memory = "64M"
[[blk]]
image = "disk.img"
readonly = true
[[net]]
tap = "tap0"
[[input]]
profile = "keyboard"
"#;

#[test]
fn good_file_plans_every_process() {
    let d = tree();
    let p = check(d.path(), GOOD).unwrap();
    let run = d.path().join("run");
    assert_eq!((p.name.as_str(), &p.run_dir), ("t", &run));
    let names: Vec<_> = p.backends.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["blk0", "net1", "input2"]);
    assert_eq!(p.backends[0].binary, d.path().join("splitvm-blk"));
    assert_eq!(p.backends[0].socket, run.join("blk0.sock"));
    let blk: Vec<_> = p.backends[0]
        .args
        .iter()
        .map(|a| a.to_string_lossy())
        .collect();
    assert_eq!(
        blk,
        [
            "--image",
            &d.path().join("disk.img").to_string_lossy(),
            "--readonly"
        ]
    );
    assert_eq!(p.backends[2].extra_files, [run.join("input2-events.sock")]);
    let vmm: Vec<_> = p.vmm_args.iter().map(|a| a.to_string_lossy()).collect();
    let vmm = vmm.join(" ");
    assert!(vmm.contains("--cpus 2 --memory 64M"), "{vmm}");
    assert!(vmm.contains(&format!(
        "--disk socket={}",
        run.join("blk0.sock").display()
    )));
    assert!(vmm.contains(&format!("--net socket={}", run.join("net1.sock").display())));
    assert!(vmm.contains(&format!(
        "--input socket={}",
        run.join("input2.sock").display()
    )));
    assert!(vmm.contains(&format!("--api-socket {}", run.join("api.sock").display())));
    assert!(locate(&d.path().join("missing.toml")).is_err());
}

#[test]
fn the_annotated_example_is_valid() {
    let d = tree();
    std::fs::write(d.path().join("initrd.img"), b"").unwrap();
    let text = include_str!("../../../examples/vm.toml");
    let p = check(d.path(), text).unwrap();
    let names: Vec<_> = p.backends.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["blk0", "net1", "input2"]);
    assert_eq!(p.name, "demo");
}

/// Broken files and the message each must produce: file, line, column,
/// field, and what is wrong.
#[test]
fn broken_files_name_file_line_and_field() {
    let table: &[(&str, &str)] = &[
        // syntax
        ("[vm\nkernel = \"vmlinux\"\n", "vm.toml:1:4: (syntax): "),
        ("[vm]\nkernel = vmlinux\n", "vm.toml:2:10: (syntax): "),
        // structure: missing and unknown keys, wrong types
        ("name = \"x\"\n", "vm.toml:1:1: vm: missing field `vm`"),
        ("[vm]\ncpus = 1\n", "vm.toml:1:1: vm.kernel: missing field `kernel`"),
        (
            "[vm]\nkernel = \"vmlinux\"\ncpu = 2\n",
            "vm.toml:3:1: vm.cpu: unknown field `cpu`",
        ),
        (
            "[vm]\nkernel = \"vmlinux\"\ncpus = \"two\"\n",
            "vm.toml:3:8: vm.cpus: invalid type: string \"two\", expected u16",
        ),
        (
            "[vm]\nkernel = \"vmlinux\"\n[[blk]]\nimage = \"disk.img\"\nreadonly = 1\n",
            "vm.toml:5:12: blk[0].readonly: invalid type: integer `1`, expected a boolean",
        ),
        (
            "[vm]\nkernel = \"vmlinux\"\n[[net]]\ntap = \"t\"\nmacs = \"x\"\n",
            "vm.toml:5:1: net[0].macs: unknown field `macs`",
        ),
        (
            "[vm]\nkernel = \"vmlinux\"\n[[disk]]\nimage = \"disk.img\"\n",
            "vm.toml:3:3: disk: unknown field `disk`",
        ),
        // values
        (
            "[vm]\nkernel = \"nope\"\n",
            "vm.toml:2:10: vm.kernel: ",
        ),
        (
            "[vm]\nkernel = \"vmlinux\"\ncpus = 0\n",
            "vm.toml:3:8: vm.cpus: must be 1..=254",
        ),
        (
            "[vm]\nkernel = \"vmlinux\"\nmemory = \"lots\"\n",
            "vm.toml:3:10: vm.memory: \"lots\" is not a size like 256M or 1G",
        ),
        (
            "[vm]\nkernel = \"vmlinux\"\nserial = \"tty\"\n",
            "vm.toml:3:10: vm.serial: expected \"stdout\" or \"file:PATH\"",
        ),
        (
            "[vm]\nkernel = \"vmlinux\"\nboot = \"uefi\"\n",
            "vm.toml:3:8: vm.boot: expected \"linux\" or \"pvh\"",
        ),
        (
            "[vm]\nkernel = \"vmlinux\"\n[[blk]]\nimage = \"disk.img\"\n[[blk]]\nimage = \"gone.img\"\n",
            "vm.toml:6:9: blk[1].image: ",
        ),
        (
            "[vm]\nkernel = \"vmlinux\"\n[[net]]\ntap = \"\"\n",
            "vm.toml:4:7: net[0].tap: empty tap name",
        ),
        (
            "[vm]\nkernel = \"vmlinux\"\n[[input]]\nprofile = \"joystick\"\n",
            "vm.toml:4:11: input[0].profile: expected keyboard, mouse, tablet or touch",
        ),
        (
            "[vm]\nkernel = \"vmlinux\"\n[[input]]\ngrab = true\n",
            "vm.toml:3:1: input[0]: give either evdev = PATH, or profile = NAME",
        ),
        (
            "name = \"a b\"\n[vm]\nkernel = \"vmlinux\"\n",
            "vm.toml:1:8: name: use letters, digits",
        ),
        (
            "backend_dir = \"nowhere\"\n[vm]\nkernel = \"vmlinux\"\n[[blk]]\nimage = \"disk.img\"\n",
            "vm.toml:1:15: backend_dir: ",
        ),
        (
            "[vm]\nkernel = \"vmlinux\"\n[[blk]]\nimage = \"disk.img\"\nsocket = \"s\"\n[[net]]\ntap = \"t\"\nsocket = \"s\"\n",
            "is used twice",
        ),
        (
            &format!("[vm]\nkernel = \"vmlinux\"\napi_socket = \"{}\"\n", "x".repeat(120)),
            "vm.toml:3:14: vm.api_socket: ",
        ),
    ];
    let d = tree();
    let file = d.path().join("vm.toml").display().to_string();
    let mut wrong = Vec::new();
    for (text, want) in table {
        let got = match check(d.path(), text) {
            Ok(_) => "accepted".to_string(),
            Err(e) => e.to_string().replacen(&file, "vm.toml", 1),
        };
        if !got.starts_with(want) && !got.contains(want) {
            wrong.push(format!("{text}\n got: {got}\nwant: {want}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}
