mod boot_cli;
