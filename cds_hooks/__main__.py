from cds_hooks.cli import run

run()
