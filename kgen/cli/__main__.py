"""`python -m kgen.cli`: the `kgen` command."""
from . import main

raise SystemExit(main())
