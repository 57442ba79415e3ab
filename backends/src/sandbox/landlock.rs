//! The Landlock layer: every file-system access right the kernel knows is
//! handled (so denied unless a rule grants it), rules grant reading or
//! writing files beneath the policy's paths and removing entries in the
//! sockets' directories; TCP bind and connect are handled with no rule
//! (denied), and, where the kernel has scopes, abstract unix sockets and
//! signals are limited to the backend's own domain.

use landlock::{
    Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd,
    RestrictionStatus, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};
use log::{info, warn};

use super::{Policy, SandboxError};

/// The newest ABI this code was written against; the crate downgrades to
/// what the kernel has (best effort) and says so in the status.
const ABI_WANTED: ABI = ABI::V6;

fn err(e: impl std::fmt::Display) -> SandboxError {
    SandboxError::Landlock(e.to_string())
}

fn rules_for(paths: &[std::path::PathBuf], access: BitFlags<AccessFs>) -> Vec<PathBeneath<PathFd>> {
    let mut out = Vec::new();
    for p in paths {
        match PathFd::new(p) {
            Ok(fd) => out.push(PathBeneath::new(fd, access)),
            Err(e) => warn!(
                "sandbox: landlock: no rule for {}: {e}; it stays inaccessible",
                p.display()
            ),
        }
    }
    out
}

/// Applies the policy's ruleset to the calling thread (and the threads it
/// starts later).
pub(super) fn restrict(policy: &Policy) -> Result<(), SandboxError> {
    let read = AccessFs::ReadFile.into();
    // Device ioctls too: a device opened again (evdev) needs them.
    let rw = AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::IoctlDev;
    let remove = AccessFs::RemoveFile.into();
    let status: RestrictionStatus = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(ABI_WANTED))
        .map_err(err)?
        .handle_access(AccessNet::from_all(ABI_WANTED))
        .map_err(err)?
        .scope(Scope::from_all(ABI_WANTED))
        .map_err(err)?
        .create()
        .map_err(err)?
        .add_rules(
            rules_for(&policy.read_paths, read)
                .into_iter()
                .map(Ok::<_, landlock::RulesetError>),
        )
        .map_err(err)?
        .add_rules(
            rules_for(&policy.rw_paths, rw)
                .into_iter()
                .map(Ok::<_, landlock::RulesetError>),
        )
        .map_err(err)?
        .add_rules(
            rules_for(&policy.remove_dirs, remove)
                .into_iter()
                .map(Ok::<_, landlock::RulesetError>),
        )
        .map_err(err)?
        .restrict_self()
        .map_err(err)?;
    let landlock = format!("{:?}", status.landlock);
    match status.ruleset {
        RulesetStatus::FullyEnforced => info!(
            "sandbox: landlock: enforced ({landlock}); files only beneath {} path(s), no TCP",
            policy.read_paths.len() + policy.rw_paths.len() + policy.remove_dirs.len()
        ),
        RulesetStatus::PartiallyEnforced => warn!(
            "sandbox: landlock: partially enforced: the kernel ({landlock}) lacks some access rights or scopes of ABI {ABI_WANTED:?}"
        ),
        RulesetStatus::NotEnforced => warn!(
            "sandbox: landlock: not enforced: the kernel does not support it ({landlock})"
        ),
    }
    Ok(())
}
