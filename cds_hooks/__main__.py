from cds_hooks.cli import main

raise SystemExit(main())
