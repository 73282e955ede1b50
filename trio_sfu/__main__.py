from trio_sfu.cli import main

raise SystemExit(main())
