"""`python -m bench ...` from the root of the checkout."""

from bench import main

raise SystemExit(main())
