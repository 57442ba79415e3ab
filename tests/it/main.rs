mod backend_cli;
mod blk;
mod blk_hostile;
mod boot_cli;
mod nested_lab;
