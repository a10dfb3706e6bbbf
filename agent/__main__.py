from agent.interfaces.cli import main

raise SystemExit(main())
