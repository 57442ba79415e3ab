mod backend_cli;
mod blk;
mod blk_hostile;
mod blk_qemu;
mod boot_cli;
mod frontend;
mod nested_lab;
mod net_hostile;
