from intents_mm.cli import main

raise SystemExit(main())
