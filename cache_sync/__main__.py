from cache_sync.cli.main import main

raise SystemExit(main())
