from diffmix.cli import main

raise SystemExit(main())
