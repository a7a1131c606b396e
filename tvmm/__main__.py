from tvmm.cli import main

raise SystemExit(main())
