//! Logger setup for the backend binaries (libraries only use the `log` facade).

use log::LevelFilter;

/// Installs `env_logger` at `level`; a `RUST_LOG` in the environment overrides it.
/// Lines go to stderr, prefixed with the program name so a test log tells
/// processes apart.
pub fn init(program: &'static str, level: LevelFilter) {
    let mut builder = env_logger::Builder::new();
    builder.filter_level(level);
    if let Ok(spec) = std::env::var("RUST_LOG") {
        builder.parse_filters(&spec);
    }
    // Under a supervisor (`splitvm up` sets SPLITVM_DEVICE) each line also
    // names the device: `splitvm-blk[blk0]: INFO ...`.
    let tag = match std::env::var("SPLITVM_DEVICE") {
        Ok(d) if !d.is_empty() => format!("{program}[{d}]"),
        _ => program.to_string(),
    };
    builder.format(move |buf, record| {
        use std::io::Write;
        writeln!(
            buf,
            "{tag}: {} {}: {}",
            record.level(),
            record.target(),
            record.args()
        )
    });
    // A second init (tests) is harmless: keep the first logger.
    let _ = builder.try_init();
}
