from lightswe.cli import main

raise SystemExit(main())
