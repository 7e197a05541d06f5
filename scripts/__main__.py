"""`python -m scripts` is `mediacdn` (so `scripts.cli` is imported once, under its name)."""

from scripts.cli import main

raise SystemExit(main())
