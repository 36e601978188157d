from ollamalite.cli import main

raise SystemExit(main())
