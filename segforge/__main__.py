from segforge.cli import main

raise SystemExit(main())
