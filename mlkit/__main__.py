from mlkit.cli import main

raise SystemExit(main())
