//! The vhost-user frontend: the VMM's side of each device's control socket.
//! Data never passes here: backends map guest memory and are kicked and
//! signal interrupts through eventfds bound in KVM.

pub mod backend_req;
pub mod device;
pub mod frontend;
pub mod kind;
pub mod monitor;
pub mod watch;
